package forwarder

import (
	"net"
	"net/netip"

	"github.com/callrelay/callrelay/protocol"
)

// streamWorker feeds stream frames to one reader: its packetConn is the
// hand-off from the connections (streamPC). A connection always uses the
// same worker, so a member's flow is served by one reader, as on UDP.
type streamWorker struct {
	in   chan *streamFrame
	quit chan struct{}
}

// workerQueue bounds the frames waiting for a worker.
const workerQueue = 4 * readBatch

// newStreamWorker makes worker i and the reader it runs: the per-packet
// path of the UDP readers, with the same limits, whose sends to UDP
// members leave from the forwarder's UDP socket (and trunk frames from its
// trunk socket).
func (f *Forwarder) newStreamWorker(i int, sc *streamCounters) (*streamWorker, *reader, error) {
	w := &streamWorker{in: make(chan *streamFrame, workerQueue), quit: make(chan struct{})}
	out, err := newPacketConn(f.conns[i%len(f.conns)])
	if err != nil {
		return nil, nil, err
	}
	n := float64(len(f.rdrs))
	cfg := &f.cfg
	r := &reader{f: f, pc: &streamPC{w: w, out: out, s: sc}, c: new(counters),
		knownLimiter: newSTUNLimiter(cfg.STUNRate, cfg.STUNBurst),
		newLimiter:   newSTUNLimiter(cfg.JoinRate/n, max(1, cfg.JoinBurst/n)),
		nudgeLimiter: newSTUNLimiter(nudgeRate, nudgeBurst),
		nudgeAll:     newSTUNLimiter(nudgeAllRate/n, nudgeAllRate/n)}
	if len(f.trunkConns) > 0 {
		tpc, err := newPacketConn(f.trunkConns[i%len(f.trunkConns)])
		if err != nil {
			return nil, nil, err
		}
		r.tpc, r.tcodec = tpc, protocol.NewTrunkCodec(cfg.Cluster.Key)
		// Trunk streams (README 6): the UDP readers number 0..n-1 and the
		// control goroutine 255; stream workers follow the readers.
		r.tcodec.Number(uint8(len(f.rdrs)+i), f.trunkSeq0)
		r.tbufs = new([readBatch][maxDatagram + protocol.TrunkOverhead]byte)
	}
	return w, r, nil
}

// streamPC is a worker's packetConn: reads take frames from the
// connections, writes go out of a UDP socket, and what the per-packet path
// would send to a stream address by UDP (a retransmission, a nudge) is not
// sent: a stream leg loses nothing to retransmit, and one with no session
// is closed at its join timeout.
type streamPC struct {
	w      *streamWorker
	out    packetConn
	s      *streamCounters
	frames [readBatch]*streamFrame
	n      int
}

func (p *streamPC) ReadBatch() (int, error) {
	p.release()
	select {
	case f := <-p.w.in:
		p.frames[0], p.n = f, 1
	case <-p.w.quit:
		return 0, net.ErrClosed
	}
	for p.n < readBatch {
		select {
		case f := <-p.w.in:
			p.frames[p.n] = f
			p.n++
			continue
		default:
		}
		break
	}
	p.s.framesIn.Add(uint64(p.n))
	return p.n, nil
}

// release gives the last batch's frames back to their connections.
func (p *streamPC) release() {
	for i := range p.n {
		f := p.frames[i]
		p.frames[i] = nil
		f.c.free <- f // never blocks: the frame came from there
	}
	p.n = 0
}

func (p *streamPC) Buf(i int) []byte         { f := p.frames[i]; return f.buf[:f.n] }
func (p *streamPC) Src(i int) netip.AddrPort { return p.frames[i].c.addr }
func (p *streamPC) Truncated(int) bool       { return false }
func (p *streamPC) Dropped() uint64          { return 0 }

func (p *streamPC) Queue(b []byte, dst *sockaddr) bool {
	if isStreamAddr(dst.ap) {
		// Only a nudge to a connection with no session comes here (its
		// NACKs are not answered: feedback.go); it goes nowhere: the
		// device rejoins when its connection's keepalives fail.
		return true
	}
	return p.out.Queue(b, dst)
}

func (p *streamPC) Flush() (sent, failed int) { return p.out.Flush() }
func (p *streamPC) Close() error              { return nil }
