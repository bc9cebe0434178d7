package regions

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/protocol"
)

// CityDevice is a device in a city's namespace speaking the wire protocol
// by hand from one socket made there (so it needs no process of its own,
// unlike Device): joins (following cookies and Try Alternate), a
// keepalive every 100 ms while it talks, and an audio packet every 20 ms
// whose payload is derived from its SSRC and sequence (PayloadOf), so
// that every packet received is checked byte for byte. With a SendClock
// it also stamps each packet's send time there and keeps the one-way
// delay of every packet it receives from a sender of the clock (senders
// and receivers share this process's clock).
type CityDevice struct {
	SSRC  uint32
	Conn  *net.UDPConn
	Token []byte
	// Fwd is the forwarder it joined; Cookie its address cookie there.
	Fwd    netip.AddrPort
	Cookie []byte
	// Sent counts the audio packets sent.
	Sent atomic.Int64

	clock   SendClock
	answers chan []byte
	mu      sync.Mutex
	got     map[uint32]int // packets received intact, by sender
	corrupt int
	delays  map[uint32][]time.Duration
	stop    chan struct{}
	wg      sync.WaitGroup
}

// SendClock is when each audio packet was sent, by SSRC and sequence
// number: its senders are put in before the devices start, and it is
// read-only as a map after.
type SendClock map[uint32]*[1 << 16]atomic.Int64

// NewSendClock is a clock for the senders ssrcs.
func NewSendClock(ssrcs ...uint32) SendClock {
	c := SendClock{}
	for _, s := range ssrcs {
		c[s] = new([1 << 16]atomic.Int64)
	}
	return c
}

// NewCityDevice makes a device with its socket in city and starts its
// reader; clock may be nil. It is closed when the test ends.
func NewCityDevice(t testing.TB, tp *Topology, city string, token []byte, ssrc uint32, clock SendClock) *CityDevice {
	t.Helper()
	d := &CityDevice{SSRC: ssrc, Token: token, clock: clock, answers: make(chan []byte, 16), got: map[uint32]int{},
		delays: map[uint32][]time.Duration{}, stop: make(chan struct{})}
	require.NoError(t, tp.Do(city, func() error {
		var err error
		d.Conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.Addr(city), 0)))
		return err
	}))
	_ = d.Conn.SetReadBuffer(1 << 20)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.read() }()
	t.Cleanup(d.Close)
	return d
}

// Close stops the device's talking and reading and closes its socket.
func (d *CityDevice) Close() {
	select {
	case <-d.stop:
		return
	default:
	}
	close(d.stop)
	_ = d.Conn.Close()
	d.wg.Wait()
}

// PayloadOf is the payload byte i of packet seq of ssrc.
func PayloadOf(ssrc uint32, seq uint16, i int) byte { return byte(int(ssrc)*31 + int(seq)*7 + i) }

// audioLen is the length of a CityDevice's audio packet (calltest.AudioRTP
// of speech).
const audioLen = 110

func (d *CityDevice) read() {
	buf := make([]byte, 2048)
	for {
		n, _, err := d.Conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		at := time.Now().UnixNano()
		b := buf[:n]
		if stun.IsMessage(b) {
			select {
			case d.answers <- append([]byte(nil), b...):
			default: // a keepalive's answer nobody waits for
			}
			continue
		}
		if len(b) < 20 || protocol.Classify(b) != protocol.KindRTP {
			continue
		}
		ssrc, seq := binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint16(b[2:4])
		ok := len(b) == audioLen
		for i := 20; ok && i < len(b); i++ {
			ok = b[i] == PayloadOf(ssrc, seq, i)
		}
		var sent int64
		if slot := d.clock[ssrc]; slot != nil {
			sent = slot[seq].Load()
			ok = ok && sent != 0
		}
		d.mu.Lock()
		if ok {
			d.got[ssrc]++
			if sent != 0 {
				d.delays[ssrc] = append(d.delays[ssrc], time.Duration(at-sent))
			}
		} else {
			d.corrupt++
		}
		d.mu.Unlock()
	}
}

// Request sends one join (keepalive) to fwd and returns its answer (3 s
// at most).
func (d *CityDevice) Request(fwd netip.AddrPort) (protocol.JoinResponse, error) {
	m, err := protocol.BuildJoinRequest(d.Token, protocol.JoinOptions{Cookie: d.Cookie})
	if err != nil {
		return protocol.JoinResponse{}, err
	}
	if _, err := d.Conn.WriteToUDPAddrPort(m.Raw, fwd); err != nil {
		return protocol.JoinResponse{}, err
	}
	deadline := time.After(3 * time.Second)
	for {
		select {
		case raw := <-d.answers:
			if r, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(d.Token)); err == nil {
				return r, nil
			}
		case <-deadline:
			return protocol.JoinResponse{}, fmt.Errorf("no answer from %s", fwd)
		}
	}
}

// ErrRefused: a join was refused without an alternate.
var ErrRefused = errors.New("refused")

// Join joins through fwd, following cookies and Try Alternate, and returns
// the forwarder that admitted the device and the answers on the way (a
// join refused without an alternate returns ErrRefused and the refusal).
func (d *CityDevice) Join(fwd netip.AddrPort) (netip.AddrPort, []protocol.JoinResponse, error) {
	var seen []protocol.JoinResponse
	for hops := 0; hops < 6; hops++ {
		r, err := d.Request(fwd)
		if err != nil {
			return netip.AddrPort{}, seen, err
		}
		seen = append(seen, r)
		switch {
		case r.OK:
			d.Fwd = fwd
			return fwd, seen, nil
		case r.Code == protocol.CodeUnauthorized && len(r.Cookie) > 0:
			d.Cookie = r.Cookie
		case r.Code == protocol.CodeTryAlternate && r.Alternate.IsValid():
			fwd, d.Cookie = r.Alternate, nil
		default:
			return netip.AddrPort{}, seen, fmt.Errorf("%w: %d %s", ErrRefused, r.Code, r.Reason)
		}
	}
	return netip.AddrPort{}, seen, errors.New("too many hops")
}

// ProbeRTT is the least of five round trips of a cookie-less join to fwd,
// which the forwarder answers with a cookie challenge, admitting nothing;
// an admission is an error.
func (d *CityDevice) ProbeRTT(fwd netip.AddrPort) (time.Duration, error) {
	best := time.Duration(-1)
	defer func() { d.Cookie = nil }()
	for range 5 {
		d.Cookie = nil
		start := time.Now()
		r, err := d.Request(fwd)
		if err != nil {
			return 0, fmt.Errorf("probe %s: %w", fwd, err)
		}
		if r.OK {
			return 0, fmt.Errorf("a cookie-less join to %s was admitted", fwd)
		}
		if rtt := time.Since(start); best < 0 || rtt < best {
			best = rtt
		}
	}
	return best, nil
}

// Talk sends audio every 20 ms (and a keepalive every 100 ms) to the
// forwarder joined until the device is closed or stopTalking.
func (d *CityDevice) Talk() (stopTalking func()) {
	quit := make(chan struct{})
	d.talk(0, quit, nil)
	var once sync.Once
	return func() { once.Do(func() { close(quit) }) }
}

// TalkN is Talk for n packets; done is closed after the last (or when
// the device is closed).
func (d *CityDevice) TalkN(n int) (done chan struct{}) {
	done = make(chan struct{})
	d.talk(n, nil, done)
	return done
}

// talk sends n packets (0: until quit or the device closes).
func (d *CityDevice) talk(n int, quit, done chan struct{}) {
	slot := d.clock[d.SSRC]
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if done != nil {
			defer close(done)
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for seq := uint16(1); n == 0 || int(seq) <= n; seq++ {
			select {
			case <-d.stop:
				return
			case <-quit:
				return
			case <-tick.C:
			}
			if seq%5 == 0 {
				if m, err := protocol.BuildJoinRequest(d.Token, protocol.JoinOptions{Cookie: d.Cookie}); err == nil {
					_, _ = d.Conn.WriteToUDPAddrPort(m.Raw, d.Fwd)
				}
			}
			p := calltest.AudioRTP(d.SSRC, seq, true)
			for i := 20; i < len(p); i++ {
				p[i] = PayloadOf(d.SSRC, seq, i)
			}
			if slot != nil {
				slot[seq].Store(time.Now().UnixNano())
			}
			if _, err := d.Conn.WriteToUDPAddrPort(p, d.Fwd); err == nil {
				d.Sent.Add(1)
			}
		}
	}()
}

// From is how many intact packets arrived from ssrc, and how many were
// corrupt in all.
func (d *CityDevice) From(ssrc uint32) (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[ssrc], d.corrupt
}

// Delays are the one-way delays of the packets from ssrc, in arrival
// order (with a SendClock only).
func (d *CityDevice) Delays(ssrc uint32) []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.delays[ssrc])
}
