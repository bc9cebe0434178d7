package loadtest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/reflector"
	"github.com/callrelay/callrelay/protocol"
)

// newDev makes device number len(e.devs), sending to target.
func (e *fastEngine) newDev(call int32, idx int, probe bool, target netip.AddrPort) (*fastDev, error) {
	no := len(e.devs)
	if no >= len(e.readyAt) {
		return nil, fmt.Errorf("loadtest: fast engine: more than %d devices", len(e.readyAt))
	}
	addr, err := e.devices().addr(e.globalDev(no))
	if err != nil {
		return nil, err
	}
	d := &fastDev{no: int32(no), addr: addr, target: target, sock: no % len(e.socks), call: call, idx: idx, //nolint:gosec // no < maxDevices
		probe: probe, key: client.NewMediaKey(), seq: uint16(rand.Uint32())} //nolint:gosec // 16 random bits
	ssrc := fastSSRC(no, probe)
	s, err := client.NewSender(client.SenderConfig{SSRC: ssrc, PayloadType: payloadType, Key: d.key, FirstSequence: d.seq | 1})
	if err != nil {
		return nil, err
	}
	if probe {
		d.sender, d.plain, d.out = s, make([]byte, speechSize), make([]byte, 0, 256)
	} else if err := d.preseal(s); err != nil {
		return nil, err
	}
	if e.f.VideoLayers > 0 && call >= 0 {
		if d.video, err = newFastVideo(e.globalDev(no), e.f.VideoLayers, d.seq); err != nil {
			return nil, err
		}
	}
	e.devs = append(e.devs, d)
	return d, nil
}

// startCall makes the call's devices and sends their joins.
func (e *fastEngine) startCall(c *callSpec) {
	now := time.Now()
	fc := &fastCall{spec: c, cls: c.idx(), start: now}
	ci := int32(len(e.calls)) //nolint:gosec // bounded by MaxCalls
	e.calls = append(e.calls, fc)
	e.pendEvent(func(w *classWindows) { w[fc.cls].callsStarted++ })
	probe := isProbeCall(c.no/max(e.p.share.of, 1), e.f.ProbeEvery) // every agent samples its own calls
	for i := range c.size {
		d, err := e.newDev(ci, i, probe, memberTarget(e.p.Forwarders, c.no, i, e.f.Spread))
		if err != nil {
			e.pendEvent(func(w *classWindows) { w[fc.cls].setups.Attempted++; w[fc.cls].setups.Refused.Other++ })
			fc.settled++
			continue
		}
		fc.devs = append(fc.devs, d.no)
	}
	if probe {
		e.addProbes(fc.devs)
	}
	if e.f.Target == TargetTURN {
		e.startTURNCall(ci, fc, now)
	}
	for _, no := range fc.devs {
		if e.f.Target == TargetTURN {
			break // admitted together when the setup is done (fast_turn.go)
		}
		d := e.devs[no]
		d.began = now
		if err := e.buildJoin(d, nil, false); err != nil {
			e.refuse(d, func(s *Setups) { s.Refused.Other++ })
			continue
		}
		e.queue(d, d.req)
		e.wheel.schedule(e.tick(now)+joinRetryTicks, d.no, evRetry)
	}
	e.wheel.schedule(e.tick(now.Add(c.duration)), ci, evCallEnd)
	e.settle(fc)
}

// memberTarget is the forwarder member i of call no joins: the call's
// forwarder (calls taken in turn), or with spread member i's, so that
// with two forwarders a one-to-one call's devices sit on different ones
// and every frame crosses the trunk once, and a group's members alternate.
func memberTarget(fwds []netip.AddrPort, no, i int, spread bool) netip.AddrPort {
	if spread {
		return fwds[(no+i)%len(fwds)]
	}
	return fwds[no%len(fwds)]
}

// addProbes gives each probe device of a call its receiving side, which
// knows every other member's key.
func (e *fastEngine) addProbes(devs []int32) {
	for _, a := range devs {
		pr := &probeRecv{recv: client.NewReceiver()}
		for _, b := range devs {
			if a != b {
				_ = pr.recv.AddSender(fastSSRC(int(b), true), e.devs[b].key) // a fresh valid key cannot fail
			}
		}
		e.probes.Store(a, pr)
	}
}

// buildJoin makes d's join (or keepalive, or leave) request for its target.
func (e *fastEngine) buildJoin(d *fastDev, cookie []byte, leave bool) error {
	if e.f.Target == TargetReflector {
		d.req = reflector.Register(uint64(d.call) + 1) //nolint:gosec // call >= 0
		return nil
	}
	if d.token == nil {
		c := e.calls[d.call]
		tok, err := protocol.SignToken(e.p.SigningKey, protocol.Token{CallID: callID(c.spec), ParticipantID: participantID(d.no),
			Class: c.spec.class, MaxSize: uint16(c.spec.size), Expiry: time.Now().Add(e.p.TokenLifetime.D())}) //nolint:gosec // size <= 50
		if err != nil {
			return err
		}
		d.token, d.ikey = tok, protocol.IntegrityKey(tok)
	}
	m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: cookie, Leave: leave})
	if err != nil {
		return err
	}
	d.req, d.tid = m.Raw, m.TransactionID
	return nil
}

// callID and participantID are ids unique to the run's call and device.
func callID(c *callSpec) protocol.ID {
	var id protocol.ID
	putU64(id[:8], c.seed)
	putU64(id[8:], uint64(c.no)) //nolint:gosec // no >= 0
	return id
}

func participantID(no int32) protocol.ID {
	id := protocol.NewID()
	putU64(id[8:], uint64(no)) //nolint:gosec // no >= 0
	return id
}

// control handles a control datagram: the answer to a device's join.
func (e *fastEngine) control(m ctlMsg) {
	if int(m.dev) >= len(e.devs) {
		return
	}
	d := e.devs[m.dev]
	if d.state != devJoining {
		return // keepalive and leave answers, late duplicates
	}
	if e.f.Target == TargetTURN {
		return // the setup's answers go to pion's client (fast_turn.go)
	}
	if e.f.Target == TargetReflector {
		if bytes.Equal(m.b, d.req) {
			e.admit(d)
		}
		return
	}
	resp, err := protocol.ParseJoinResponse(m.b, d.tid, d.ikey)
	switch {
	case err != nil:
		return // not the answer to the pending request
	case resp.OK:
		d.keepalive = max(resp.Params.KeepaliveInterval, 100*time.Millisecond)
		e.admit(d)
	case resp.Code == stun.CodeUnauthorized && len(resp.Cookie) > 0:
		d.cookie = resp.Cookie
		if e.buildJoin(d, d.cookie, false) == nil {
			e.queue(d, d.req)
		}
	case resp.Code == stun.CodeInsufficientCapacity:
		e.refuse(d, func(s *Setups) { s.Refused.Capacity++ })
	case resp.Code == stun.CodeTryAlternate:
		e.refuse(d, func(s *Setups) { s.Refused.TryAlternate++ })
	default:
		e.refuse(d, func(s *Setups) { s.Refused.Other++ })
	}
}

// admit starts an admitted device's frames (at a random phase) and
// keepalives.
func (e *fastEngine) admit(d *fastDev) {
	c := e.calls[d.call]
	d.state = devUp
	c.joined++
	c.settled++
	setup := ms(time.Since(d.began))
	e.pendEvent(func(w *classWindows) {
		w[c.cls].setups.Attempted++
		w[c.cls].setups.Admitted++
		w[c.cls].setup.Add(setup)
	})
	e.r.partsUp.Add(1)
	now := e.tick(time.Now())
	e.wheel.schedule(now+1+rand.Int64N(int64(frameEvery/time.Millisecond)), d.no, evFrame)
	e.readyAt[d.no].Store(int64(time.Since(e.epoch) + readyAfter))
	if e.f.Target == TargetForwarder {
		e.wheel.schedule(now+int64(d.keepalive/time.Millisecond), d.no, evKeepalive)
	}
	if c.joined == 2 && !c.up {
		c.up = true
		e.r.callsUp.Add(1)
	}
	e.settle(c)
}

// refuse ends a device's join, counted by how.
func (e *fastEngine) refuse(d *fastDev, how func(*Setups)) {
	c := e.calls[d.call]
	d.state = devGone
	c.settled++
	e.pendEvent(func(w *classWindows) { w[c.cls].setups.Attempted++; how(&w[c.cls].setups) })
	e.settle(c)
}

// settle counts a call failed once every join ended with fewer than two
// admitted.
func (e *fastEngine) settle(c *fastCall) {
	if c.settled == c.spec.size && c.joined < 2 && !c.up {
		c.settled++ // count once
		e.pendEvent(func(w *classWindows) { w[c.cls].callsFailed++ })
	}
}

// keepalive sends d's keepalive (the join request again, with its cookie).
func (e *fastEngine) keepalive(d *fastDev) {
	m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: d.cookie})
	if err == nil {
		e.queue(d, m.Raw)
	}
}

// endCall stops its members' frames; they leave leaveAfter later.
func (e *fastEngine) endCall(ci int, tk int64) {
	c := e.calls[ci]
	if c == nil || c.ended {
		return
	}
	c.ended = true
	for _, no := range c.devs {
		d := e.devs[no]
		if d.state == devUp {
			e.r.partsUp.Add(-1)
			d.state = devLeaving
		} else {
			d.state = devGone
		}
	}
	if c.up {
		e.r.callsUp.Add(-1)
	}
	e.live.Add(-1)
	e.wheel.schedule(tk+int64(leaveAfter/time.Millisecond), int32(ci), evLeave) //nolint:gosec // bounded by MaxCalls
}

// leaveCall sends the members' leaves and forgets them.
func (e *fastEngine) leaveCall(ci int) {
	c := e.calls[ci]
	if c == nil || c.left {
		return
	}
	for _, no := range c.devs {
		d := e.devs[no]
		if d.state == devLeaving && e.f.Target == TargetForwarder {
			if m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: d.cookie, Leave: true}); err == nil {
				e.queue(d, m.Raw)
			}
		}
		d.state = devGone
		d.tpl, d.sender, d.plain, d.out, d.token, d.req = [2][]byte{}, nil, nil, nil, nil, nil
		e.probes.Delete(no)
	}
	e.calls[ci] = &fastCall{ended: true, left: true, spec: c.spec} // drop the members' list
}

// startBaseline starts the baseline pairs: probe devices that send to each
// other directly, never through the relay.
func (e *fastEngine) startBaseline() error {
	for range max(e.f.BaselinePairs, 0) {
		a, err := e.newDev(-1, 0, true, netip.AddrPort{})
		if err != nil {
			return err
		}
		b, err := e.newDev(-1, 1, true, netip.AddrPort{})
		if err != nil {
			return err
		}
		a.target = netip.AddrPortFrom(b.addr, e.socks[b.sock].LocalAddr().Port())
		b.target = netip.AddrPortFrom(a.addr, e.socks[a.sock].LocalAddr().Port())
		e.addProbes([]int32{a.no, b.no})
		for _, d := range []*fastDev{a, b} {
			d.direct, d.state = true, devUp
			e.wheel.schedule(1+rand.Int64N(int64(frameEvery/time.Millisecond)), d.no, evFrame)
		}
	}
	return nil
}

// pendEvent applies f to the scheduler's pending windows.
func (e *fastEngine) pendEvent(f func(*classWindows)) {
	e.mu.Lock()
	f(&e.pend)
	e.mu.Unlock()
}
