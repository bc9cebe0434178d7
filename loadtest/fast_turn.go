package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v4"
	"golang.org/x/sys/unix"
)

// The fast engine's TURN target (Fast.Target "turn"): coturn, or any TURN
// server, relaying the same one-to-one audio as the forwarder. In each
// call the first device holds a TURN allocation (RFC 8656) with a channel
// bound to the second device's address; the second is the allocation's
// peer and sends plain UDP to the relayed address. So every frame crosses
// the TURN server once, one datagram in and one out, as it crosses the
// forwarder once: the first device's frames go as ChannelData (a 4-byte
// header before the same RTP packet), its peer's come back to it the same
// way. The allocation, permission and channel binding are made at setup
// by pion/turn's client, over a socket bound for the setup to the
// device's own address and the port of its engine socket (both with
// SO_REUSEADDR; the more specific binding gets the answers), then closed:
// from then on the engine's sockets send and read the frames in batches,
// with the same 5-tuple. Nothing refreshes the allocation, so a TURN run
// lasts less than the server's allocation and permission lifetimes
// (coturn: 10 and 5 minutes).

// TargetTURN is the fast engine's TURN target.
const TargetTURN = "turn"

// TURNAuth is the TURN long-term credential of target "turn" (never
// written out with the plan).
type TURNAuth struct {
	User, Password string
}

// channelHeader is the ChannelData header: channel number, then the
// length of the data after the header.
const channelHeader = 4

// putChannelHeader writes the ChannelData header of a frame with n bytes
// of data.
func putChannelHeader(b []byte, channel uint16, n int) {
	binary.BigEndian.PutUint16(b[0:2], channel)
	binary.BigEndian.PutUint16(b[2:4], uint16(n)) //nolint:gosec // frames are < 1500 bytes
}

// parseChannelData reads a ChannelData message (RFC 8656 12.4): a channel
// number in 0x4000..0x4FFF, the data's length, the data (and, over UDP,
// perhaps padding, ignored). ok is false for anything else.
func parseChannelData(b []byte) (channel uint16, data []byte, ok bool) {
	if len(b) < channelHeader {
		return 0, nil, false
	}
	channel = binary.BigEndian.Uint16(b[0:2])
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if channel < 0x4000 || channel > 0x4FFF || channelHeader+n > len(b) {
		return 0, nil, false
	}
	return channel, b[channelHeader : channelHeader+n], true
}

// turnResult is the outcome of one call's TURN setup, for the scheduler.
type turnResult struct {
	call    int32
	relayed netip.AddrPort // the first device's relayed address
	channel uint16         // its channel to the peer
	err     error
}

// turnSetup is what a setup needs to know, copied from the scheduler's
// devices.
type turnSetup struct {
	call         int32
	server       netip.AddrPort
	client, peer netip.AddrPort // the first device's and its peer's addresses
	auth         TURNAuth
	timeout      time.Duration
}

// turnSetups bounds the setups running at once.
const turnSetups = 32

// startTURN runs a call's setup in its own goroutine (at most turnSetups
// at once) and hands the result to the scheduler.
func (e *fastEngine) startTURN(s turnSetup) {
	go func() {
		select {
		case e.turnSem <- struct{}{}:
		case <-e.loopDone:
			return
		}
		relayed, ch, err := allocateChannel(s)
		<-e.turnSem
		select {
		case e.turnCh <- turnResult{call: s.call, relayed: relayed, channel: ch, err: err}:
		case <-e.loopDone:
		}
	}()
}

// allocateChannel makes s.client's allocation, its permission for s.peer
// and a channel to it, and returns the relayed address and the channel.
func allocateChannel(s turnSetup) (netip.AddrPort, uint16, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	lc := net.ListenConfig{Control: reuseAddr}
	pc, err := lc.ListenPacket(ctx, "udp4", s.client.String())
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("loadtest: turn setup socket: %w", err)
	}
	spy := &channelSpy{PacketConn: pc, seen: make(chan struct{})}
	quiet := logging.NewDefaultLoggerFactory()
	quiet.DefaultLogLevel = logging.LogLevelDisabled
	cl, err := turn.NewClient(&turn.ClientConfig{TURNServerAddr: s.server.String(), Username: s.auth.User,
		Password: s.auth.Password, Conn: spy, LoggerFactory: quiet})
	if err != nil {
		_ = pc.Close()
		return netip.AddrPort{}, 0, err
	}
	var relay net.PacketConn
	defer func() {
		// The socket first: the allocation outlives the setup (the
		// deallocation Close sends goes nowhere; it stops pion's timers).
		_ = pc.Close()
		if relay != nil {
			_ = relay.Close()
		}
		cl.Close()
	}()
	if err := cl.Listen(); err != nil {
		return netip.AddrPort{}, 0, err
	}
	if relay, err = cl.Allocate(); err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("loadtest: turn allocate: %w", err)
	}
	// The first write makes the permission (and waits for it), and starts
	// the channel binding; once bound, pion sends ChannelData, which the
	// spy sees, with the channel's number.
	peer := net.UDPAddrFromAddrPort(s.peer)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for ch := spy.channel.Load(); ch == 0; ch = spy.channel.Load() {
		if _, err := relay.WriteTo([]byte{0xff}, peer); err != nil {
			return netip.AddrPort{}, 0, fmt.Errorf("loadtest: turn permission: %w", err)
		}
		select {
		case <-spy.seen:
		case <-t.C:
		case <-ctx.Done():
			return netip.AddrPort{}, 0, errors.New("loadtest: turn channel binding: no answer in time")
		}
	}
	ra, ok := relay.LocalAddr().(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, 0, errors.New("loadtest: turn: no relayed address")
	}
	ap := ra.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), uint16(spy.channel.Load()), nil //nolint:gosec // 0x4000..0x4FFF
}

// channelSpy passes the TURN client's datagrams through and notes the
// channel number of the first ChannelData it sends.
type channelSpy struct {
	net.PacketConn
	channel atomic.Uint32
	seen    chan struct{}
}

func (s *channelSpy) WriteTo(b []byte, to net.Addr) (int, error) {
	if ch, _, ok := parseChannelData(b); ok && s.channel.CompareAndSwap(0, uint32(ch)) {
		close(s.seen)
	}
	return s.PacketConn.WriteTo(b, to)
}

// reuseAddr sets SO_REUSEADDR: a setup socket bound to one device's
// address and an engine socket bound to the same port on every address.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
		return err
	}
	return serr
}

// turnReady admits a call's two devices once its setup is done: the first
// sends ChannelData to the server, its peer plain UDP to the relayed
// address.
func (e *fastEngine) turnReady(r turnResult) {
	c := e.calls[r.call]
	if c == nil || c.ended || len(c.devs) != 2 {
		return
	}
	a, b := e.devs[c.devs[0]], e.devs[c.devs[1]]
	if r.err != nil {
		e.turnFail.Add(1)
		for _, d := range []*fastDev{a, b} {
			if d.state == devJoining {
				e.refuse(d, func(s *Setups) { s.Refused.Other++ })
			}
		}
		return
	}
	a.useChannel(r.channel)
	b.target = r.relayed
	e.admit(a)
	e.admit(b)
}

// useChannel sends d's frames on a TURN channel from now on: its
// pre-sealed frames get the ChannelData header in front (their offsets
// move with it), its probes' frames get it as they are sealed.
func (d *fastDev) useChannel(ch uint16) {
	d.channel = ch
	for k := range d.tpl {
		if d.tpl[k] == nil {
			continue
		}
		d.tpl[k] = append(make([]byte, channelHeader, channelHeader+len(d.tpl[k])), d.tpl[k]...)
		putChannelHeader(d.tpl[k], ch, len(d.tpl[k])-channelHeader)
		d.payOff[k] += channelHeader
		if d.absOff[k] > 0 {
			d.absOff[k] += channelHeader
		}
	}
}

// channelFrame prefixes a probe's sealed packet with d's ChannelData
// header (in d's own buffer).
func (d *fastDev) channelFrame(pkt []byte) []byte {
	d.cframe = append(d.cframe[:0], 0, 0, 0, 0)
	d.cframe = append(d.cframe, pkt...)
	putChannelHeader(d.cframe, d.channel, len(pkt))
	return d.cframe
}

// startTURNCall starts the setup of a one-to-one call through TURN: its
// first device allocates, its second is the peer.
func (e *fastEngine) startTURNCall(ci int32, fc *fastCall, now time.Time) {
	for _, no := range fc.devs {
		e.devs[no].began = now
	}
	if len(fc.devs) != 2 {
		for _, no := range fc.devs {
			e.refuse(e.devs[no], func(s *Setups) { s.Refused.Other++ })
		}
		return
	}
	a, b := e.devs[fc.devs[0]], e.devs[fc.devs[1]]
	e.startTURN(turnSetup{call: ci, server: a.target, auth: e.f.TURN, timeout: e.p.JoinTimeout.D(),
		client: netip.AddrPortFrom(a.addr, e.socks[a.sock].LocalAddr().Port()),
		peer:   netip.AddrPortFrom(b.addr, e.socks[b.sock].LocalAddr().Port())})
}
