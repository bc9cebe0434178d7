package loadtest

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/internal/mmsg"
)

// newFastEngine opens the engine's sockets and starts its readers,
// baseline pairs and scheduler.
func newFastEngine(r *runner) (*fastEngine, error) {
	e := &fastEngine{r: r, p: r.p, f: r.p.Fast, epoch: time.Now(), wheel: newWheel(1024),
		add: make(chan *callSpec, 1024), readyAt: make([]atomic.Int64, deviceBound(r.p)), ctl: make(chan ctlMsg, 16384), loopDone: make(chan struct{}), settled: -1,
		turnSem: make(chan struct{}, turnSetups), turnCh: make(chan turnResult, turnSetups)}
	if err := e.openConns(); err != nil {
		return nil, err
	}
	if e.f.selective() {
		for range e.socks {
			e.sel = append(e.sel, newSelState())
		}
	}
	for i, c := range e.socks {
		rd := &fastReader{e: e, c: c, sock: i, buf: make([]byte, mmsg.BufSize)}
		e.rds = append(e.rds, rd)
		e.readers.Add(1)
		go func() { defer e.readers.Done(); rd.run() }()
	}
	if err := e.startBaseline(); err != nil {
		e.closeSockets()
		e.readers.Wait()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stopLoop = cancel
	go e.loop(ctx)
	return e, nil
}

func (e *fastEngine) closeSockets() {
	for _, c := range e.socks {
		_ = c.Close()
	}
	e.socks = nil
}

// submit hands a call to the scheduler; false when MaxConcurrentCalls are
// up (the call is skipped).
func (e *fastEngine) submit(ctx context.Context, c *callSpec) bool {
	if int(e.live.Load()) >= e.p.Bounds.MaxConcurrentCalls {
		return false
	}
	e.live.Add(1)
	select {
	case e.add <- c:
	case <-ctx.Done():
		e.live.Add(-1)
	}
	return true
}

// stop ends every call (leaves sent), lets the last frames arrive, and
// closes the sockets.
func (e *fastEngine) stop() {
	e.stopLoop()
	<-e.loopDone
	time.Sleep(200 * time.Millisecond) // frames in flight (bounded: loopback)
	e.closeSockets()
	e.readers.Wait()
}

// tick is the wheel tick (1 ms) of t.
func (e *fastEngine) tick(t time.Time) int64 { return int64(t.Sub(e.epoch) / time.Millisecond) }

// loop is the scheduler: new calls, control datagrams, and the wheel
// advanced every millisecond, its writes flushed after each advance.
func (e *fastEngine) loop(ctx context.Context) {
	defer close(e.loopDone)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.endAll()
			e.flush()
			return
		case c := <-e.add:
			e.startCall(c)
		case m := <-e.ctl:
			e.control(m)
		case r := <-e.turnCh:
			e.turnReady(r)
		case <-t.C:
			e.advance(time.Now())
		}
		e.flush()
	}
}

// advance fires the wheel's events due by now, noting how late the first
// of them was (the generator's tick lag).
func (e *fastEngine) advance(now time.Time) {
	cur := int64(-1)
	e.wheel.advance(e.tick(now), func(tk int64, ev wheelEvent) {
		if tk != cur {
			if cur < 0 {
				e.r.noteLag(now.Sub(e.epoch.Add(time.Duration(tk) * time.Millisecond)))
			} else {
				// Catching up on late ticks: a device may fire again in
				// the next one, into the buffer queued for this one.
				e.flush()
				now = time.Now() // the frames' stamps say when they leave
			}
			cur = tk
		}
		e.fire(tk, ev, now)
	})
}

func (e *fastEngine) fire(tk int64, ev wheelEvent, now time.Time) {
	switch ev.kind {
	case evCallEnd:
		e.endCall(int(ev.id), tk)
		return
	case evLeave:
		e.leaveCall(int(ev.id))
		return
	}
	d := e.devs[ev.id]
	switch ev.kind {

	case evFrame:
		if d.state != devUp {
			return
		}
		e.sendFrame(d, now)
		if d.video != nil {
			e.sendVideo(d, now)
		}
		e.wheel.schedule(tk+int64(frameEvery/time.Millisecond), ev.id, evFrame)
	case evKeepalive:
		if d.state != devUp || d.direct {
			return
		}
		e.keepalive(d)
		e.wheel.schedule(tk+int64(d.keepalive/time.Millisecond), ev.id, evKeepalive)
	case evRetry:
		if d.state != devJoining {
			return
		}
		if now.Sub(d.began) > e.p.JoinTimeout.D() {
			e.refuse(d, func(s *Setups) { s.Refused.Timeout++ })
			return
		}
		e.queue(d, d.req)
		e.wheel.schedule(tk+joinRetryTicks, ev.id, evRetry)
	}
}

// joinRetryTicks is how often an unanswered join is sent again (ms).
const joinRetryTicks = 250

// queue adds b, from d, to d's socket's write batch.
func (e *fastEngine) queue(d *fastDev, b []byte) {
	c := e.socks[d.sock]
	if !c.Queue(b, d.target, d.addr) {
		e.flushOne(c)
		c.Queue(b, d.target, d.addr)
	}
}

func (e *fastEngine) flush() {
	for _, c := range e.socks {
		e.flushOne(c)
	}
}

func (e *fastEngine) flushOne(c fastConn) {
	if _, failed := c.Flush(); failed > 0 {
		e.sendFail.Add(uint64(failed))
	}
}

// endAll ends every call still running.
func (e *fastEngine) endAll() {
	for i, c := range e.calls {
		if c != nil && !c.ended {
			e.endCall(i, e.wheel.now)
		}
		if c != nil && !c.left {
			e.leaveCall(i)
		}
	}
	for _, d := range e.devs {
		if d.direct {
			d.state = devGone
		}
	}
}
