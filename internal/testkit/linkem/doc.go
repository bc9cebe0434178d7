// Package linkem is an in-process UDP link emulator for tests: it sits
// between one client UDP socket and one server address (a forwarder) on
// loopback and impairs the traffic between them with loss, delay, jitter and
// a rate-limited bottleneck queue, as Linux netem/tbf would on a real path,
// but without root, namespaces or tc.
//
// linkem is a test tool. It must never be used on a production path: it
// drops and delays packets on purpose, listens only on loopback, relays for
// exactly one client, and is sized for test traffic rather than load.
//
// # Wiring
//
// The client sends to [Link.Addr] instead of the server. The link relays
// each datagram to the server from a second socket of its own, so the server
// sees [Link.ServerSide] as the client's address, and relays the server's
// replies back to whichever client address last sent to the link. Datagrams
// reaching the server-side socket from anyone but the server, and server
// datagrams that arrive before any client has sent, are not relayed; they
// are counted as Stray.
//
// # What happens to a packet
//
// Each direction ("up": client to server, "down": server to client) has its
// own [Profile], replaceable at runtime with [Link.SetUp] and [Link.SetDown].
// A packet read by the link goes through, in this order (netem's order):
//
//  1. random loss: dropped with probability Loss, independently per packet;
//  2. the bottleneck queue (only if RateBps > 0): dropped if the bytes still
//     waiting for the bottleneck plus its own length exceed QueueBytes
//     (tail drop), otherwise serialised after the packets ahead of it at
//     len*8/RateBps;
//  3. propagation: Delay plus a uniform draw from [0, Jitter];
//  4. release at the resulting departure time, in arrival order.
//
// The link is order-preserving: a packet never leaves before the one
// received ahead of it in the same direction. A jitter draw that would make
// a packet overtake its predecessor is raised to the predecessor's departure
// time instead, so packets spaced closer than Jitter clump together and
// their delays skew upwards, as on a jittery path with a FIFO, rather than
// arriving reordered as with netem's default.
//
// Departure times are computed on a virtual timeline, not from when the
// previous packet actually left, so a late wake-up of the scheduler delays a
// packet a little but never lowers the long-run rate: the bottleneck delivers
// RateBps on average whatever the timer resolution. The timeline starts from
// the time the kernel received each datagram (SO_TIMESTAMPNS on Linux; the
// time of the read elsewhere), so a reader goroutine scheduled late on a busy
// machine does not add to the delay or let the bottleneck queue run dry.
// Packets are released by a timer, so each one may leave up to about a
// millisecond (more on a loaded machine) after its departure time.
//
// A profile change applies to packets read after it; packets already
// scheduled keep their departure times.
//
// # Bounds
//
// Every queue and pool is bounded. At most [MaxInFlight] packets per
// direction wait for departure, in buffers of [MaxPayload] bytes taken from a
// bounded pool; a packet beyond either bound is dropped and counted as
// Limit. Randomness (loss and jitter) comes from a PCG generator per
// direction seeded from the seed given to [New], so a run is reproducible as
// far as packet arrival timing allows.
package linkem
