// Package bwe estimates the capacity of one network leg from the packets
// that arrive over it, on the receiving side, after Google Congestion
// Control (draft-ietf-rmcat-gcc-02). The forwarder runs one Estimator per
// sender's uplink (packets from the device, stamped with the sender's
// abs-send-time); the client runs one for its downlink (packets from the
// relay, each still stamped by its original sender) and reports the result
// to the relay as REMB.
//
// bwe only measures and computes. It never allocates per packet, never
// locks (the caller serialises all calls to an Estimator) and never reads
// the clock: every time is an argument, so tests drive it on a fake clock.
// It never sees packet contents, only arrival and send times, sizes and
// sequence numbers.
//
// # Algorithm
//
// Arrival grouping (§5.2). Packets sent within 5 ms of the first of a group
// form one group; so does a packet that arrives within 5 ms of the group's
// last one and earlier than its send spacing predicts (a burst released by
// the network). Each completed group is compared with the one before:
// d = (arrival delta) - (send delta), the change in queueing delay.
//
// Trend (§5.3, as a trendline). The accumulated d is smoothed
// exponentially (0.9), and its slope against arrival time is fitted by
// least squares over the last 20 groups (at most 1 s old). Send times of
// different senders come from different clocks, so each stream index keeps
// its own points and the fit is pooled "within" streams: each stream is
// centred on its own means, which removes the unknown offsets between
// clocks. The slope, scaled by min(groups seen, 60) x 4, is the modified
// trend m, in ms.
//
// Overuse detection (§5.4). m is compared with an adaptive threshold that
// follows |m| (quickly down, slowly up; 6..600 ms, starting at 12.5).
// Overuse is m above the threshold for over 10 ms and two groups, with m
// not falling, and the smoothed slope more than three standard errors of
// the raw-delay slope (jitter makes short slopes; a queue makes lasting
// ones). Underuse is m below minus the threshold. A queue that filled
// before the trend could see it (a sender starting far above the capacity)
// shows only as delay without gradient: 50 ms above the lowest delay of
// the last minute, with loss of 2% or more, counts as overuse once, until
// the queue is seen to drain.
//
// Rate control (§5.5). Overuse: decrease to 0.85 x the incoming rate (at
// most every 200 ms), then hold. Underuse: hold. Normal: increase, by 8%
// per second while the link capacity is unknown, and by about a packet per
// 300 ms near it (the capacity being the average incoming rate at
// decreases), to at most 1.5 x incoming + 10 kbit/s. Once the delay has
// been steady for a whole second, the estimate is never below the incoming
// rate: what arrived without the queue growing, the leg carried.
//
// Loss (§6), counted per stream from RTP sequence numbers over the last
// second (longer at low packet rates, until 20 packets were expected):
// 2% or more stops increases; above 10% the estimate is cut to
// estimate x (1 - loss/2), at most every 500 ms and never below the
// incoming rate. The estimate is finally clamped to [MinBps, MaxBps].
//
// The incoming rate is measured over the last second in 50 ms buckets.
//
// # Callers
//
// Call OnPacket for every RTP packet with its arrival time, and Update
// every 25..100 ms. Give each sender clock (each SSRC is simplest) its own
// stream index below MaxStreams; packets of other streams count towards
// the rate only. Unwrap abs-send-time with one SendTimeUnwrapper per
// sender.
//
// On the downlink, the send times are the original senders', so the delay
// the client measures includes the sender's uplink and the relay's queue,
// not only the downlink.
package bwe
