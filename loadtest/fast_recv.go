package loadtest

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/rtp"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/reflector"
)

// probeRecv is a probe device's receiving side (its reader only).
type probeRecv struct {
	recv *client.Receiver
}

// fastReader reads one socket of the fast engine and measures what its
// devices receive. Its figures are kept under mu, taken once per batch
// and by the harvest.
type fastReader struct {
	e    *fastEngine
	c    fastConn
	sock int
	buf  []byte
	hdr  rtp.Header

	mu                          sync.Mutex
	delay                       [2]Sketch
	probeDelay, baseDelay       Sketch
	received, decryptFail, late [2]uint64
	rcv                         [2][lossRing]uint64
	drops, stray                uint64
	rxLag                       Sketch // kernel arrival to read, ms (receiveLag)
}

var reflectorMagic = reflector.Register(0)[:10]

func (rd *fastReader) run() {
	for {
		n, err := rd.c.ReadBatch()
		if err != nil {
			if rd.e.loopClosed() {
				return
			}
			time.Sleep(time.Millisecond) // transient (ICMP-induced) errors: go on
			continue
		}
		// A datagram arrived when the kernel queued it (SO_TIMESTAMPNS),
		// not when this goroutine got to read it: the generator's own
		// scheduling (its one core shared with the scheduler goroutine)
		// stays out of every delay. The kernel's clock is the wall clock,
		// the stamps' the monotonic one: the wall time between arrival
		// and now is taken off the monotonic now.
		now := time.Now()
		nowNs, wallNs := int64(now.Sub(rd.e.epoch)), now.UnixNano()
		rd.mu.Lock()
		for i := range n {
			at := nowNs
			if rx := rd.c.RxTime(i); rx > 0 && rx <= wallNs {
				at -= wallNs - rx
				rd.rxLag.Add(ms(time.Duration(wallNs - rx)))
			}
			rd.handle(rd.c.Buf(i), rd.c.Dst(i), at)
		}
		rd.drops += rd.c.Dropped()
		rd.mu.Unlock()
	}
}

// handle files one datagram. rd.mu is held.
func (rd *fastReader) handle(b []byte, dst netip.Addr, nowNs int64) {
	if len(b) == 0 {
		return
	}
	if b[0]&0xc0 == 0x40 && rd.e.f.Target == TargetTURN { // ChannelData from the TURN server
		_, data, ok := parseChannelData(b)
		if !ok || len(data) == 0 {
			rd.stray++
			return
		}
		b = data
	}
	switch {
	case b[0] < 4 || bytes.HasPrefix(b, reflectorMagic): // a join answer or a registration echo
		rd.control(b, dst)
	case b[0]>>6 == 2 && len(b) >= 12 && (b[1] < 192 || b[1] > 223):
		rd.media(b, dst, nowNs)
	default:
		rd.stray++ // RTCP from the relay (REMB, NACK answers), anything else
	}
}

func (rd *fastReader) control(b []byte, dst netip.Addr) {
	dev, ok := rd.e.localDev(dst)
	if !ok {
		rd.stray++
		return
	}
	select {
	case rd.e.ctl <- ctlMsg{dev: int32(dev), b: append([]byte(nil), b...)}: //nolint:gosec // dev < maxDevices
	default:
		rd.e.ctlLost.Add(1) // the device repeats its request
	}
}

// media measures one RTP packet: a pre-sealed copy's stamp is read in
// clear, a probe's frame is decrypted and checked.
func (rd *fastReader) media(b []byte, dst netip.Addr, nowNs int64) {
	_, probe, ok := fastSender(binary.BigEndian.Uint32(b[8:12]))
	if !ok {
		rd.stray++ // a relay probe (SSRC 0), or not ours
		return
	}
	var p []byte
	if probe {
		dev, ok := rd.e.localDev(dst)
		v, found := rd.e.probes.Load(int32(dev)) //nolint:gosec // dev < maxDevices
		if !ok || !found {
			rd.stray++ // a call that just ended
			return
		}
		got, err := v.(*probeRecv).recv.Open(rd.buf, b, &rd.hdr)
		if err != nil || len(got) < stampSize || !probeFillerOK(got, binary.BigEndian.Uint32(got[12:16])) {
			rd.decryptFail[0]++
			return
		}
		p = got
	} else {
		off, _, ok := rtpOffsets(b, 0)
		if !ok || len(b) < off+stampSize {
			rd.stray++
			return
		}
		p = b[off:]
	}
	sentNs, cls, flags, _ := readStamp(p)
	age := nowNs - sentNs
	d := ms(time.Duration(age))
	if flags&stampDirect != 0 {
		rd.baseDelay.Add(d)
		return
	}
	rd.received[cls]++
	rd.delay[cls].Add(d)
	if probe {
		rd.probeDelay.Add(d)
	}
	if age < 0 || age > lossGraceNs {
		rd.late[cls]++ // counts as lost: settled without it
		return
	}
	if dev, ok := rd.e.localDev(dst); !ok || dev >= len(rd.e.readyAt) {
		return
	} else if r := rd.e.readyAt[dev].Load(); r == 0 || sentNs < r {
		return // sent before the receiver counted: not expected of it
	}
	if rd.e.noteStream(rd.sock, b, dst, sentNs, cls) {
		rd.rcv[cls][(sentNs/lossBucketNs)%lossRing]++
	}
}

// harvest moves what the engine measured since the last harvest into w:
// the readers' figures, the scheduler's setups and calls, and the loss of
// every bucket that can be settled. When final (the run is over), the
// buckets that cannot be settled yet are dropped: frames still in flight
// when the run ended are neither expected nor received. r.mu is held.
func (e *fastEngine) harvest(w *classWindows, final bool) {
	nowNs := int64(time.Since(e.epoch))
	settle := (nowNs-settleAfterNs)/lossBucketNs - 1 // the last bucket that ended settleAfter ago
	e.settleUpTo(w, settle)
	if final {
		e.dropUpTo(nowNs / lossBucketNs)
	}
	for _, rd := range e.rds {
		rd.mu.Lock()
		for cls := range 2 {
			w[cls].delay.Merge(&rd.delay[cls])
			rd.delay[cls].Reset()
			w[cls].received += rd.received[cls]
			w[cls].decryptFail += rd.decryptFail[cls]
			rd.received[cls], rd.decryptFail[cls] = 0, 0
		}
		w[0].probeDelay.Merge(&rd.probeDelay)
		w[0].baseDelay.Merge(&rd.baseDelay)
		rd.probeDelay.Reset()
		rd.baseDelay.Reset()
		e.r.mediaDropped.Add(rd.drops)
		rd.drops = 0
		rd.mu.Unlock()
	}
	for cls := range 2 {
		w[cls].sent += e.sent[cls].Swap(0)
	}
	e.mu.Lock()
	w.merge(&e.pend)
	e.pend.reset()
	e.mu.Unlock()
}

// settleUpTo adds the expected and received frames of the buckets up to
// settle to w.
func (e *fastEngine) settleUpTo(w *classWindows, settle int64) {
	if settle <= e.settled {
		return
	}
	if settle-e.settled > lossRing {
		e.settled = settle - lossRing
	}
	for _, rd := range e.rds {
		rd.mu.Lock()
		for b := e.settled + 1; b <= settle; b++ {
			for cls := range 2 {
				w[cls].speechRcvd += rd.rcv[cls][b%lossRing]
				rd.rcv[cls][b%lossRing] = 0
			}
		}
		rd.mu.Unlock()
	}
	for b := e.settled + 1; b <= settle; b++ {
		for cls := range 2 {
			w[cls].expected += e.expected[cls][b%lossRing].Swap(0)
		}
	}
	e.settled = settle
}

// dropUpTo forgets the buckets up to last unsettled.
func (e *fastEngine) dropUpTo(last int64) {
	var scratch classWindows
	e.settleUpTo(&scratch, last)
}

func (e *fastEngine) loopClosed() bool {
	select {
	case <-e.loopDone:
		return true
	default:
		return false
	}
}

// receiveLag is how long the readers took to read datagrams after the
// kernel queued them, over the run: the generator's receive latency, kept
// out of the delays (they count from the kernel's arrival time).
func (e *fastEngine) receiveLag() Percentiles {
	var s Sketch
	for _, rd := range e.rds {
		rd.mu.Lock()
		s.Merge(&rd.rxLag)
		rd.mu.Unlock()
	}
	return s.Percentiles()
}
