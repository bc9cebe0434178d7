// Package loadtest is the core of `callrelay loadtest`: it makes realistic
// end-to-end-encrypted calls against a relay through the client library
// (real protocol, real sockets) and measures their quality.
//
// A Plan says where the relay's forwarders are, the call mix (one-to-one
// and group calls of a size range), how long calls last (exponential,
// clamped), and how calls arrive: a Poisson process whose rate follows a
// profile, steady, spike (base to peak within a minute, hold, decay) or
// ramp (step by step until a quality target breaks; the last good step is
// the knee). Every participant joins with its own signed token through
// multi-connect, and sends 20 ms audio frames, SRTP-encrypted, with RFC 6464
// levels following an ITU-T P.59 conversation (internal/talkspurt): 80-byte
// speech frames while talking, 12-byte comfort-noise frames otherwise. The
// plaintext carries the frame counter and the send time, so the receivers,
// which hold the senders' keys, measure one-way delay, RFC 3550 jitter,
// loss and media gaps; one member of each group call follows the relay's
// dominant-speaker messages and measures switch latency.
//
// Participants run the client library's side of the relay's network
// adaptation (media.go): audio carries abs-send-time; every receiver runs a
// client.Feedback (NACKs, RR+REMB, PLIs; duplicates dropped), so the loss
// reported is what is left after NACK (the loss before it is kept too);
// with Plan.Video a share of the participants also send a synthetic camera
// (client.VideoSender, obeying the relay's simulcast, targets, REMB and
// PLI), and every other member of their call subscribes to it and decrypts
// it.
//
// Run aggregates everything per second and per call class into a Result
// (result.go: the stable JSON the report renderer reads), with fixed-size
// sketches for percentiles, and says when the generator itself was the
// bottleneck (its CPU, late sender ticks, dropped media).
//
// What users feel when the relay fails under them (listen.go,
// livecall.go): a device that loses its forwarder re-joins (Plan.Rejoin),
// and the silence it heard meanwhile is measured; one that is lost for good
// drops its call (Measures.CallsDropped, apart from failed setups), and the
// speech it missed or would have sent counts as lost. Plan.LateJoin has a
// share of the members join a while into their call, after every stream
// rolled over if asked, and counts what they decrypt (latejoin.go).
//
// With Plan.NATS and Plan.ClusterKey, Run also reads the forwarders' own
// LoadReports on <subject>.forwarders (relay.go): throttle level, sessions,
// CPU and memory signals per forwarder and second (Second.Forwarders,
// Result.Relay). Plan.Chaos injects failures (chaos.go): SIGKILL, SIGTERM
// or SIGSTOP/SIGCONT of processes whose pids the caller names in
// Plan.Processes, and down-then-up of services (Redis, NATS) the caller
// names in Plan.Services (chaos_service.go: servers it runs itself, or
// shell commands); each is recorded as an Event with the longest media
// gap after it. RunController and RunAgent (agent.go) spread a plan over
// agent processes on other hosts through NATS; Merge (partial.go) combines
// their raw per-second counts and sketches into one Result.
//
// Plan.Transports puts a share of the devices behind a network that
// blocks UDP (transport.go): they reach the forwarders over their TCP or
// TLS listeners only, after trying UDP towards a socket of the generator
// that never answers, and Result.Transports gives the quality per
// transport (udp4, udp6, tcp, tls). What the forwarders dropped from
// backed-up stream legs is read from their metrics (streamqueue.go).
//
// It must never send to any address but the plan's forwarders (their UDP
// addresses and the TCP and TLS listeners Plan.Transports names), its own
// swallowing UDP sockets and the metrics endpoints the plan names: joins do
// not follow 300 Try Alternate unless Plan.FollowAlternates says so (a
// forwarder's MigrateTo during a drain is still obeyed by the client
// library). It never signals a process or runs a command the caller did
// not give it (Plan.Processes, Plan.Services), and agents never run chaos.
// Every run is bounded in time and in calls and ends by itself.
package loadtest
