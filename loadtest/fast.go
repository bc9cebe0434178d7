package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/protocol"
)

// The fast engine (Plan.Engine "fast"): thousands of simulated devices on
// a few goroutines and sockets. Each socket (bound to a port on every
// address, mmsg with IP_PKTINFO) speaks for many devices, each from its
// own address in 127.0.0.0/8 (fast_addr.go); one scheduler goroutine owns
// every device and drives their 20 ms frames, keepalives, join
// retransmissions and call ends from a timer wheel (fast_wheel.go),
// writing in batches (sendmmsg); one reader goroutine per socket reads in
// batches (recvmmsg) and measures (fast_recv.go); Fast.IO "packet" moves
// the same datagrams as raw frames on an AF_PACKET socket instead
// (fast_io.go). Devices join with real signed tokens and the STUN join of
// the wire spec, address check included (fast_join.go). Most devices send copies of frames sealed once
// with the send time written into the (opaque) payload; the members of
// every Fast.ProbeEvery-th call are probes, running the client library's
// SRTP on every frame, whose receivers decrypt and check every byte; a
// few baseline pairs of probes send to each other directly, never through
// the relay, so that the relay's added delay is probe delay minus
// baseline delay, measured in the same run on the same generator.
//
// Loss: every frame a device sends is expected by each other member of its
// call the generator knows to be admitted (without a conductor every
// member's audio goes to every other, protocol/README.md 5.11), counted by
// send time in 100 ms buckets; a bucket is settled lossGrace after it
// ends, and a frame arriving later counts as lost. No NACKs are sent: the
// loss reported is the loss before any retransmission, an upper bound of
// the loss after NACK.

// Engines and fast targets.
const (
	EngineFull      = "full"
	EngineFast      = "fast"
	TargetForwarder = "forwarder"
	TargetReflector = "reflector"
)

func (f Fast) withDefaults() Fast {
	if f.Target == "" {
		f.Target = TargetForwarder
	}
	if f.Sockets == 0 {
		f.Sockets = 2
	}
	if f.ProbeEvery == 0 {
		f.ProbeEvery = 20
	}
	if f.BaselinePairs == 0 {
		f.BaselinePairs = 4
	}
	return f.packetDefaults()
}

// validateFast says what of p the fast engine cannot run.
func validateFast(p *Plan) error {
	f := p.Fast
	var errs []error
	switch f.Target {
	case TargetForwarder, TargetReflector:
	case TargetTURN:
		if p.Mix.OneToOne < 1 {
			errs = append(errs, errors.New("fast.target turn: one-to-one calls only (mix.one_to_one 1)"))
		}
		if f.TURN.User == "" {
			errs = append(errs, errors.New("fast.target turn: needs the TURN user and password (--turn-user, --turn-password)"))
		}
	default:
		errs = append(errs, fmt.Errorf("fast.target %q: want %s, %s or %s", f.Target, TargetForwarder, TargetReflector, TargetTURN))
	}
	if err := validateIO(f); err != nil {
		errs = append(errs, err)
	}
	if f.Sockets < 1 || f.Sockets > 64 {
		errs = append(errs, fmt.Errorf("fast.sockets %d: want 1..64", f.Sockets))
	}
	if f.ProbeEvery < 1 {
		errs = append(errs, fmt.Errorf("fast.probe_every %d: want >= 1", f.ProbeEvery))
	}
	if f.Forwarded < 0 || f.Forwarded > 50 || f.VideoLayers < 0 || f.VideoLayers > protocol.MaxSimulcastLayers {
		errs = append(errs, fmt.Errorf("fast.forwarded %d, fast.video_layers %d: want 0..50 and 0..%d", f.Forwarded, f.VideoLayers, protocol.MaxSimulcastLayers))
	}
	if f.selective() && f.Target == TargetTURN {
		errs = append(errs, errors.New("fast.target turn: no forwarded or video_layers (one-to-one audio only)"))
	}
	if f.BaselinePairs > 100 {
		errs = append(errs, fmt.Errorf("fast.baseline_pairs %d: at most 100", f.BaselinePairs))
	}
	if p.Video.Share > 0 || p.LateJoin.Share > 0 || p.RefreshTokens {
		errs = append(errs, errors.New("the fast engine sends audio only, on time, with one token per device: no video, late_join or refresh_tokens (use engine full)"))
	}
	if p.Mix.GroupMax > 50 {
		errs = append(errs, errors.New("the fast engine makes groups of at most 50"))
	}
	for _, a := range p.Forwarders {
		if !a.Addr().Unmap().Is4() {
			errs = append(errs, fmt.Errorf("the fast engine speaks IPv4 only: %s", a))
		}
	}
	return errors.Join(errs...)
}

// Device states.
const (
	devJoining uint8 = iota
	devUp
	devLeaving // its call ended: no more frames, its leave follows
	devGone
)

// Wheel event kinds.
const (
	evFrame uint8 = iota
	evKeepalive
	evRetry
	evCallEnd
	evLeave
)

// leaveAfter is how long after its last frames a call's members leave:
// their frames in flight reach the relay, and their peers, first.
const leaveAfter = 300 * time.Millisecond

// readyAfter is how long after its admission a member starts to count as
// a receiver in the loss accounting: the forwarder publishes its routes
// once per batch, so the first frames others send after an admission may
// not reach the newcomer yet (a call's start, not the relay's capacity).
const readyAfter = 200 * time.Millisecond

// fastDev is one simulated device; the scheduler goroutine owns it.
type fastDev struct {
	no     int32
	addr   netip.Addr
	target netip.AddrPort // where its media and requests go (the peer's address for a baseline device)
	sock   int
	call   int32 // index in fastEngine.calls (-1: baseline)
	idx    int   // member index in its call
	state  uint8
	probe  bool
	direct bool
	seq    uint16
	frame  uint32
	// channel is the TURN channel its frames go on (target turn, the
	// allocating device; 0: plain RTP), cframe a probe's framed packet.
	channel uint16
	cframe  []byte
	// video is its simulcast video (Fast.VideoLayers; nil: none).
	video *fastVideo
	// spurt is the first of its talkspurts that has not ended yet (at
	// the last frame), spurtFrom and spurtTo its bounds (spurtTo 0: not
	// read yet): see talking.
	spurt              int
	spurtFrom, spurtTo time.Duration
	// Kept from its call by fanout: the call's class and start, and its
	// receivers once all of them count (fanFull).
	cls       int
	callStart time.Time
	fan       int32
	fanFull   bool

	// Pre-sealed frames (not probes): [0] silence, [1] speech, with the
	// offsets of their abs-send-time bytes and payloads.
	tpl    [2][]byte
	absOff [2]int
	payOff [2]int

	// Probes: the client library's sender, the plaintext and packet
	// buffers, the device's media key.
	sender *client.Sender
	key    client.MediaKey
	plain  []byte
	out    []byte

	// Join: token, integrity key, last cookie, the pending request.
	token, ikey, cookie, req []byte
	tid                      [12]byte
	began                    time.Time
	keepalive                time.Duration
}

// fastCall is one call of the fast engine.
type fastCall struct {
	spec    *callSpec
	devs    []int32
	cls     int
	start   time.Time
	joined  int // members admitted and not gone
	settled int // members whose join ended (admitted or refused)
	up      bool
	ended   bool // no more frames
	left    bool // leaves sent, members forgotten
}

// ctlMsg is a control datagram (a join answer, a registration echo) for
// device dev, handed from a reader to the scheduler.
type ctlMsg struct {
	dev int32
	b   []byte
}

// lossRing is how many 100 ms loss buckets are kept (12.8 s).
const (
	lossRing     = 128
	lossBucketNs = int64(100 * time.Millisecond)
	lossGraceNs  = int64(time.Second)
	// settleAfterNs: a bucket is settled this long after it ends (the
	// readers stop counting into it at lossGrace).
	settleAfterNs = lossGraceNs + int64(100*time.Millisecond)
)

// fastEngine is the fast engine of one run.
type fastEngine struct {
	r     *runner
	p     Plan
	f     Fast
	epoch time.Time
	socks []fastConn
	addrs addrRange // the devices' addresses (fast_addr.go)
	rds   []*fastReader

	devs  []*fastDev  // scheduler only
	calls []*fastCall // scheduler only
	wheel *wheel      // scheduler only
	add   chan *callSpec
	ctl   chan ctlMsg
	// probes maps a probe device's number to its receiving side (read by
	// the readers; stored by the scheduler before the device's first join).
	probes sync.Map
	live   atomic.Int64 // calls running
	// readyAt holds, by device number, when the device starts to count as
	// a receiver (ns since the epoch; 0: not admitted): readyAfter its
	// admission. The sender counts a frame expected by the members ready
	// at its send time, the reader counts a frame received by one only if
	// sent after that.
	readyAt []atomic.Int64

	expected [2][lossRing]atomic.Uint64
	sent     [2]atomic.Uint64
	ctlLost  atomic.Uint64
	sendFail atomic.Uint64
	turnFail atomic.Uint64 // TURN setups that failed

	// Target turn: setups running (bounded) and their results.
	turnSem chan struct{}
	turnCh  chan turnResult
	settled int64 // last settled bucket; harvest only

	// Selective forwarding (fast_select.go): each reader's stream state
	// (nil unless Fast.Forwarded or Fast.VideoLayers), the senders' side.
	sel     []*selState
	selSent selCounters

	mu   sync.Mutex
	pend classWindows // setups and calls, from the scheduler

	stopLoop context.CancelFunc
	loopDone chan struct{}
	readers  sync.WaitGroup
}
