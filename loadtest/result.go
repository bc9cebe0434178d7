package loadtest

import "time"

// Result is what a load test run measured. It is written as JSON (the
// `callrelay loadtest` result file) and read by the report renderer
// (loadtest/report). Field names and JSON keys are stable: add fields, do
// not rename or remove them.
//
// Units: every latency or duration measured by the run is a float64 in
// milliseconds, in a field whose JSON key ends in `_ms`; rates are per
// second; percentages are 0..100 in fields ending in `_pct`. Durations that
// come from the plan keep the plan's form (a Go duration string, "30s").
type Result struct {
	// Plan is the plan that ran, with its defaults filled in. The signing
	// key is never part of it.
	Plan Plan `json:"plan"`
	// Start is when the first arrival was scheduled (wall clock, UTC).
	Start time.Time `json:"start"`
	// DurationMs is how long the run lasted, from Start to the last call
	// closed.
	DurationMs float64 `json:"duration_ms"`
	// Stopped says why the run ended: "profile_done", "target_broken"
	// (ramp), "max_duration", "max_calls" or "cancelled".
	Stopped string `json:"stopped"`

	// Seconds is the per-second series, one entry per whole second since
	// Start (index i covers [i s, i+1 s)).
	Seconds []Second `json:"seconds"`
	// Totals are the whole run's figures per call class.
	Totals Totals `json:"totals"`
	// Transports are the figures per transport (udp4, udp6, tcp, tls:
	// TransportMeasures), for the transports devices used (full engine).
	Transports map[string]TransportMeasures `json:"transports,omitempty"`
	// StreamQueue is what the forwarders' TCP and TLS legs dropped from
	// their send queues (only with Plan.Transports.Metrics).
	StreamQueue *StreamQueue `json:"stream_queue,omitempty"`

	// Steps are the ramp profile's steps (empty for other profiles).
	Steps []Step `json:"steps,omitempty"`
	// Knee is where the ramp profile broke (nil for other profiles).
	Knee *Knee `json:"knee,omitempty"`

	// Generator is the load generator's own health: if Bottleneck is true,
	// the figures may reflect the generator's limits, not the relay's.
	Generator GeneratorHealth `json:"generator"`
	// Forwarding is what the relay forwarded of what the devices sent, in
	// a fast-engine run with selective forwarding (a conductor's gating,
	// simulcast layers: fast_select.go); nil otherwise. This engine's
	// own: not merged across agents.
	Forwarding *Forwarding `json:"forwarding,omitempty"`
	// Verdict compares Totals.All with the plan's targets.
	Verdict Verdict `json:"verdict"`

	// Relay summarises the forwarders' own LoadReports (throttle levels,
	// CPU, memory, sessions); nil when the plan gave no NATS connection.
	Relay *RelayHealth `json:"relay,omitempty"`
	// Geo is where the cities' calls were placed and their mouth-to-ear
	// estimates (geo_result.go); nil without Plan.Cities.
	Geo *GeoResult `json:"geo,omitempty"`
	// Events are the chaos actions executed, in order (chaos.go).
	Events []Event `json:"events,omitempty"`
	// Agents lists the agents whose partial results were merged (empty
	// for a run on one machine); see Merge.
	Agents []AgentInfo `json:"agents,omitempty"`
}

// Call class keys, as used in Totals and Second and by Measures.Class.
const (
	ClassOneToOne = "one_to_one"
	ClassGroup    = "group"
	ClassAll      = "all"
)

// Totals holds Measures per call class and over all calls.
type Totals struct {
	All      Measures `json:"all"`
	OneToOne Measures `json:"one_to_one"`
	Group    Measures `json:"group"`
}

// Second is one second of the run.
type Second struct {
	// T is the second's index since Result.Start.
	T int `json:"t"`
	// Phase is the profile phase at the second's start: "steady";
	// "base", "rise", "hold", "decay", "tail" (spike); "step-N" (ramp,
	// N from 0); "ending" past the profile's end. Figures reported while
	// the calls close after the last second go to Totals only.
	Phase string `json:"phase"`
	// TargetRate is the call arrival rate the profile asked for (calls/s)
	// at the second's start.
	TargetRate float64 `json:"target_rate"`
	// CallsUp is how many calls were up at the end of the second (at least
	// one member admitted, its session not lost, and not yet closed).
	CallsUp int `json:"calls_up"`
	// ParticipantsUp is how many participants were joined at the end of
	// the second (their session not lost).
	ParticipantsUp int `json:"participants_up"`
	// All, OneToOne and Group are the second's measures per class.
	All      Measures `json:"all"`
	OneToOne Measures `json:"one_to_one"`
	Group    Measures `json:"group"`
	// GeneratorCPUPct is the generator's process CPU in the second, in
	// percent of one core (200 = two cores busy).
	GeneratorCPUPct float64 `json:"generator_cpu_pct"`
	// TickLagMs is the mean lateness of the senders' 20 ms ticks in the
	// second.
	TickLagMs float64 `json:"tick_lag_ms"`
	// RelayCPUPct is the relay process's CPU in the second (Plan.RelayPID),
	// in percent of one core.
	RelayCPUPct float64 `json:"relay_cpu_pct,omitempty"`
	// Forwarders holds, per forwarder id, what its LoadReports said in the
	// second (only with Plan.NATS; absent for a forwarder that did not
	// report in the second).
	Forwarders map[string]ForwarderSecond `json:"forwarders,omitempty"`
}

// Measures are the figures of one call class over a second, a ramp step or
// the whole run.
type Measures struct {
	// CallsStarted counts calls whose setup began; CallsFailed those of
	// them in which fewer than two members were admitted.
	CallsStarted int `json:"calls_started"`
	CallsFailed  int `json:"calls_failed"`
	// CallsDropped counts calls set up in which a member's session was
	// lost for good (no forwarder took it back in time, Plan.Rejoin, or
	// the relay ended it), counted in the second the call closed (a call
	// whose members are all lost is no longer up, but closes at its
	// planned end: what it would have carried counts as lost).
	// SessionsLost counts those sessions, in the second each was lost.
	// DroppedCallsPct = CallsDropped / (CallsStarted - CallsFailed), in
	// percent (0 when no call was set up); a call set up in one second
	// and dropped in another makes it exact over the run only.
	CallsDropped    int     `json:"calls_dropped"`
	SessionsLost    int     `json:"sessions_lost"`
	DroppedCallsPct float64 `json:"dropped_calls_pct"`
	// RejoinSilenceMs is, per re-join (a device that lost its forwarder,
	// because it died, hung or forgot the device, and was taken back:
	// client.EventFailover or EventRejoined), the silence the device
	// heard: from the last audio packet it decrypted before it noticed
	// the loss to the first one after (to its call's end if none came).
	// The speech frames that did not arrive meanwhile, both ways, count in
	// PacketsExpected and PacketsLost; so do those a session lost for
	// good missed, and those it would have sent, until its call closed.
	RejoinSilenceMs Percentiles `json:"rejoin_silence_ms"`
	// LateJoin is what the late joiners (Plan.LateJoin) decrypted.
	LateJoin LateJoinMeasures `json:"late_join"`
	// Setups counts joins (one per participant), by outcome.
	Setups Setups `json:"setups"`
	// SetupSuccessPct is Setups.Admitted / Setups.Attempted, in percent
	// (100 when nothing was attempted).
	SetupSuccessPct float64 `json:"setup_success_pct"`
	// SetupMs is the join latency of admitted joins (client.Join call to
	// its return).
	SetupMs Percentiles `json:"setup_ms"`
	// FirstAudioMs is, per admitted participant, the time from the start
	// of its join to the first audio frame it decrypted.
	FirstAudioMs Percentiles `json:"first_audio_ms"`

	// PacketsSent counts audio packets the participants sent;
	// PacketsReceived those other participants received and decrypted.
	PacketsSent     uint64 `json:"packets_sent"`
	PacketsReceived uint64 `json:"packets_received"`
	// PacketsExpected is the speech frames receivers should have got, from
	// the gaps in the senders' speech-frame counters; PacketsLost = the
	// speech frames expected and not received (never negative); LossPct =
	// Lost / Expected in percent. Silence frames are left out on purpose:
	// the conductor holds back the audio of members outside a call's
	// forwarding set, which is a decision, not loss.
	//
	// Receivers run the client library's Feedback: it drops duplicates
	// and NACKs gaps, which the relay answers from its cache, so a frame
	// counts as lost only if it did not arrive after NACK either: LossPct
	// is the unrecovered loss after NACK (the figure the loss target is
	// checked on). PacketsRecovered counts the speech frames that arrived
	// after a later one: resent by the relay after a NACK, or reordered;
	// RawLossPct = (PacketsLost + PacketsRecovered) / PacketsExpected is
	// the loss before recovery.
	PacketsExpected  uint64  `json:"packets_expected"`
	PacketsLost      uint64  `json:"packets_lost"`
	LossPct          float64 `json:"loss_pct"`
	PacketsRecovered uint64  `json:"packets_recovered"`
	RawLossPct       float64 `json:"raw_loss_pct"`
	// DecryptFailures counts packets that failed SRTP authentication or
	// whose plaintext did not parse.
	DecryptFailures uint64 `json:"decrypt_failures"`
	// RelayPacketsPerSec is (PacketsSent + PacketsReceived), plus the
	// video's (Video.PacketsSent + Video.PacketsReceived), per second of
	// the window: the packets into and out of the relay the load caused.
	RelayPacketsPerSec float64 `json:"relay_packets_per_sec"`

	// DelayMs is the one-way delay (sender's timestamp in the plaintext to
	// the receiver's socket read; sender and receiver share the
	// generator's clock).
	DelayMs Percentiles `json:"delay_ms"`
	// ProbeDelayMs is the fast engine's probe calls' one-way delay through
	// the relay; BaselineDelayMs its baseline pairs' (probe devices that
	// send to each other directly, never through the relay, in the same
	// run); RelayAddedDelayP99Ms = the p99 of the first minus the p99 of
	// the second (never negative): the delay the relay adds.
	ProbeDelayMs         Percentiles `json:"probe_delay_ms,omitzero"`
	BaselineDelayMs      Percentiles `json:"baseline_delay_ms,omitzero"`
	RelayAddedDelayP99Ms float64     `json:"relay_added_delay_p99_ms,omitempty"`
	// JitterMs is the mean, over received packets, of the receiving
	// stream's RFC 3550 interarrival jitter estimate (6.4.1) at that
	// packet; JitterMaxMs its largest value.
	JitterMs    float64 `json:"jitter_ms"`
	JitterMaxMs float64 `json:"jitter_max_ms"`
	// MaxGapMs is the longest time between two consecutive packets of one
	// received stream (a media gap: loss bursts, failover, held-back audio).
	MaxGapMs float64 `json:"max_gap_ms"`

	// SpeakerSwitchMs is the dominant-speaker switch latency: from the
	// start of the new speaker's talk spurt to the relay's DominantSpeaker
	// message naming it (group calls with a conductor only).
	SpeakerSwitchMs Percentiles `json:"speaker_switch_ms"`

	// Feedback is what the receivers' client Feedback sent and found.
	Feedback FeedbackMeasures `json:"feedback"`
	// Video is the video mix's figures (zero without Plan.Video).
	Video VideoMeasures `json:"video"`
}

// LateJoinMeasures are the late joiners' figures: whether they decrypt
// every member, whose streams may have rolled over before they came.
type LateJoinMeasures struct {
	// Joined counts late joiners admitted (their joins count in Setups
	// too), in the second each joined.
	Joined int `json:"joined"`
	// StreamsExpected counts, per late joiner, the audio streams of the
	// members up (admitted and not lost) when it joined; StreamsDecrypted
	// those of them it decrypted at least one packet of;
	// StreamsUndecryptable those whose packets reached it and never
	// decrypted (a receiver that cannot find a stream's rollover counter
	// fails so, for good). A stream the relay held back from it (a silent
	// member outside the forwarding set) is neither. Counted when the
	// late joiner leaves.
	StreamsExpected      uint64 `json:"streams_expected"`
	StreamsDecrypted     uint64 `json:"streams_decrypted"`
	StreamsUndecryptable uint64 `json:"streams_undecryptable"`
	// StreamsAfterRollover counts the streams, audio and video, whose
	// first packet a late joiner decrypted carried a non-zero rollover
	// counter (client.ReceiverStats.FirstROC): joined after the sender's
	// sequence number wrapped.
	StreamsAfterRollover uint64 `json:"streams_after_rollover"`
	// DecryptFailures counts the audio packets late joiners failed to
	// decrypt (also in Measures.DecryptFailures).
	DecryptFailures uint64 `json:"decrypt_failures"`
}

// FeedbackMeasures are the receivers' RTCP feedback (client.Feedback),
// audio and video streams apart.
type FeedbackMeasures struct {
	// Reports counts RR+REMB compounds sent, NACKs the NACK packets, PLIs
	// the PLIs; Duplicates the received packets dropped as duplicates
	// (a retransmission that crossed the original).
	Reports    uint64         `json:"reports"`
	NACKs      uint64         `json:"nacks"`
	PLIs       uint64         `json:"plis"`
	Duplicates uint64         `json:"duplicates"`
	Audio      StreamFeedback `json:"audio"`
	Video      StreamFeedback `json:"video"`
}

// StreamFeedback is what receivers' sequence numbers showed for one kind
// of stream. A receiver cannot tell loss from a gap the relay made on
// purpose (the audio the conductor holds back, a video layer it stopped
// forwarding to the receiver for a while): those are NACKed too, and
// given up, so Unrecovered is an upper bound of the loss.
type StreamFeedback struct {
	// NACKed counts sequence numbers NACKed, each try once; Recovered
	// those that arrived after a NACK; Unrecovered those given up.
	NACKed      uint64 `json:"nacked"`
	Recovered   uint64 `json:"recovered"`
	Unrecovered uint64 `json:"unrecovered"`
}

// VideoMeasures are the video mix's figures: what the cameras sent, what
// the subscribers decrypted, and what the relay told the cameras.
type VideoMeasures struct {
	// SenderSeconds counts the cameras once per second they were up;
	// Layers splits them by the simulcast layers being sent then (index
	// 0: one stream, 1: two layers, 2: three).
	SenderSeconds uint64    `json:"sender_seconds"`
	Layers        [3]uint64 `json:"layers"`
	// PacketsSent, BytesSent and KeyFrames are the cameras' RTP over all
	// layers (packets as sent, SRTP tag included); SentKbps the bytes'
	// rate over the window.
	PacketsSent uint64  `json:"packets_sent"`
	BytesSent   uint64  `json:"bytes_sent"`
	KeyFrames   uint64  `json:"key_frames"`
	SentKbps    float64 `json:"sent_kbps"`
	// PacketsReceived and BytesReceived count the video packets
	// subscribers decrypted and found to name the layer of their SSRC;
	// ReceivedByLayer splits the packets by layer; ReceivedKbps is the
	// bytes' rate. DecryptFailures counts video packets that failed.
	PacketsReceived uint64    `json:"packets_received"`
	BytesReceived   uint64    `json:"bytes_received"`
	ReceivedByLayer [3]uint64 `json:"received_by_layer"`
	ReceivedKbps    float64   `json:"received_kbps"`
	DecryptFailures uint64    `json:"decrypt_failures"`
	// What the relay told the cameras, as they applied it: PLIs (PLI or
	// FIR), TargetBitrates, REMBs and SimulcastControls.
	PLIs              uint64 `json:"plis"`
	TargetBitrates    uint64 `json:"target_bitrates"`
	REMBs             uint64 `json:"rembs"`
	SimulcastControls uint64 `json:"simulcast_controls"`
}

// Setups counts joins by outcome. A join is counted in the second it
// ended (admitted or refused); joins cut short by the end of the run are
// not counted.
type Setups struct {
	Attempted int `json:"attempted"`
	Admitted  int `json:"admitted"`
	// Refused counts joins that did not succeed, by reason; their sum is
	// Attempted - Admitted once every attempt has ended.
	Refused Refusals `json:"refused"`
}

// Refusals counts failed joins by reason, from the *client.JoinError the
// join failed with (the last forwarder's answer decides).
type Refusals struct {
	// Capacity: 508 Insufficient Capacity (throttled), retry-after ran out.
	Capacity int `json:"capacity_508"`
	// TryAlternate: the join ended on 300 Try Alternate (not followed, as
	// Plan.FollowAlternates is off by default, or followed and still not
	// admitted).
	TryAlternate int `json:"try_alternate_300"`
	// Timeout: no forwarder answered in time.
	Timeout int `json:"timeout"`
	// Other: anything else (401/403/400, socket errors).
	Other int `json:"other"`
}

// Total returns the number of refused joins.
func (r Refusals) Total() int { return r.Capacity + r.TryAlternate + r.Timeout + r.Other }

// Percentiles summarises a latency distribution (milliseconds), computed
// from a fixed-size log-bucketed sketch (relative error about 2%).
type Percentiles struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

// Step is one step of the ramp profile, measured over the step.
type Step struct {
	Index int `json:"index"`
	// Rate is the step's call arrival rate (calls/s).
	Rate float64 `json:"rate"`
	// StartS and EndS are the step's bounds in seconds since Result.Start.
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	// MeanCallsUp is the mean of the per-second CallsUp over the step;
	// MaxCallsUp the largest.
	MeanCallsUp float64 `json:"mean_calls_up"`
	MaxCallsUp  int     `json:"max_calls_up"`
	// Measures are the step's figures over all classes.
	Measures Measures `json:"measures"`
	// Met is true when the step met every target; Broken names the targets
	// it broke (Check.Target values).
	Met    bool     `json:"met"`
	Broken []string `json:"broken,omitempty"`
	// GeneratorCPUPct is the generator's mean CPU over the step (percent
	// of one core); GeneratorBound is set when the generator, not the
	// relay, was the limit in the step (its CPU above 85 % of its cores,
	// its ticks late, or its sockets dropping): such a step is not a
	// measure of the relay, and a ramp stops there with no knee.
	GeneratorCPUPct float64 `json:"generator_cpu_pct"`
	GeneratorBound  bool    `json:"generator_bound,omitempty"`
	// RelayCPUPct is the relay process's mean CPU over the step (with
	// Plan.RelayPID), and PacketsPerRelayCPUSecond the step's relay
	// packets (in + out) per second of relay CPU.
	RelayCPUPct              float64 `json:"relay_cpu_pct,omitempty"`
	PacketsPerRelayCPUSecond float64 `json:"packets_per_relay_cpu_second,omitempty"`
}

// Knee is the ramp's capacity estimate: the last step that met every
// target.
type Knee struct {
	// Found is false when even the first step broke a target (then the
	// other fields describe nothing) .
	Found bool `json:"found"`
	// Step is the index of the last step that met the targets.
	Step int     `json:"step"`
	Rate float64 `json:"rate"`
	// ConcurrentCalls is that step's mean number of calls up.
	ConcurrentCalls float64 `json:"concurrent_calls"`
	// PacketsPerSec is that step's relay packets per second (in + out).
	PacketsPerSec float64 `json:"packets_per_sec"`
	// RelayCores is Plan.RelayCores; when it is known (> 0),
	// ConcurrentCallsPerCore and PacketsPerSecPerCore divide by it.
	RelayCores             float64 `json:"relay_cores,omitempty"`
	ConcurrentCallsPerCore float64 `json:"concurrent_calls_per_core,omitempty"`
	PacketsPerSecPerCore   float64 `json:"packets_per_sec_per_core,omitempty"`
	// BrokeAtStep is the index of the first step that broke a target (-1
	// when none broke: the ramp ended on a bound, and the knee is a lower
	// bound); BrokenTargets what it broke.
	BrokeAtStep   int      `json:"broke_at_step"`
	BrokenTargets []string `json:"broken_targets,omitempty"`
	// GeneratorBound is set when the step that ended the ramp was limited
	// by the generator, not the relay: then no knee is reported (Found is
	// false) and the steps before it are only a lower bound.
	GeneratorBound bool `json:"generator_bound,omitempty"`
}

// GeneratorHealth says whether the load generator itself kept up.
type GeneratorHealth struct {
	// GOMAXPROCS and NumCPU of the generator process.
	GOMAXPROCS int `json:"gomaxprocs"`
	NumCPU     int `json:"num_cpu"`
	// CPUMeanPct and CPUMaxPct are the process CPU (user + system, from
	// getrusage) in percent of one core, mean and worst second.
	CPUMeanPct float64 `json:"cpu_mean_pct"`
	CPUMaxPct  float64 `json:"cpu_max_pct"`
	// TickLagMeanMs is the mean lateness of the senders' 20 ms ticks
	// (timer fire to send); TickLagMaxMs the worst; LateTicks counts ticks
	// more than 10 ms late.
	TickLagMeanMs float64 `json:"tick_lag_mean_ms"`
	TickLagMaxMs  float64 `json:"tick_lag_max_ms"`
	LateTicks     uint64  `json:"late_ticks"`
	// MediaDropped counts received packets the client library dropped
	// because the generator did not read them fast enough.
	MediaDropped uint64 `json:"media_dropped"`
	// SkippedArrivals counts calls the profile asked for that were not
	// started because Plan.MaxConcurrentCalls were up.
	SkippedArrivals int `json:"skipped_arrivals"`
	// Bottleneck is true when the generator's CPU was above 85% of its
	// GOMAXPROCS cores, ticks were late by more than 10 ms on average, or
	// it dropped received media; Reasons says which.
	Bottleneck bool     `json:"bottleneck"`
	Reasons    []string `json:"reasons,omitempty"`
	// Engine is Plan.Engine; PacketsPerCPUSecond the packets the generator
	// sent and received per second of its own CPU over the run, and
	// CPUPerPacketUs its inverse in microseconds: what the generator
	// itself costs per packet.
	Engine              string  `json:"engine,omitempty"`
	FastIO              string  `json:"fast_io,omitempty"` // the fast engine's Fast.IO
	PacketsPerCPUSecond float64 `json:"packets_per_cpu_second,omitempty"`
	CPUPerPacketUs      float64 `json:"cpu_per_packet_us,omitempty"`
	// ReceiveLagMs (fast engine) is how long after the kernel queued a
	// datagram the generator's readers read it: its own receive latency,
	// which no delay figure includes (they count from the kernel's
	// arrival time, SO_TIMESTAMPNS).
	ReceiveLagMs Percentiles `json:"receive_lag_ms,omitzero"`
	// FrameOverruns (fast engine, packet I/O) counts frames the relay
	// side's kernel refused as they were sent: its receive backlog
	// (net.core.netdev_max_backlog) was full, as a NIC's ring overflows.
	// They count as lost, not as the generator's failure.
	FrameOverruns uint64 `json:"frame_overruns,omitempty"`
}

// Verdict is the run's pass/fail against the plan's targets.
type Verdict struct {
	// Pass is true when every check passed.
	Pass   bool    `json:"pass"`
	Checks []Check `json:"checks"`
}

// Check is one target compared with its measured value.
type Check struct {
	// Target is one of "setup_success_pct", "setup_p95_ms", "loss_pct",
	// "delay_p95_ms", and, when the plan sets them, "dropped_calls_pct"
	// and "rejoin_silence_p99_ms".
	Target string `json:"target"`
	// Op is ">=" or "<=": Pass is Measured Op Limit.
	Op       string  `json:"op"`
	Limit    float64 `json:"limit"`
	Measured float64 `json:"measured"`
	Pass     bool    `json:"pass"`
}
