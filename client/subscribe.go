package client

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// SubscriptionResend is how often the current set of video subscriptions
// is sent again. The relay applies only a newer sequence (protocol/README.md
// 5.5), so a repeat costs one small packet and makes up for a lost one.
const SubscriptionResend = 2 * time.Second

// subscriptionCheck is how often a Subscriber looks for a new Conn or an
// in-place rejoin, after which it sends the set at once.
const subscriptionCheck = 100 * time.Millisecond

// Subscriber keeps the relay told which videos the device wants
// (Subscription, CRLY APP subtype 4). Subscribe sends a new set under the
// next sequence number; the current set goes again every
// SubscriptionResend, and at once (within 100ms) after the session moved:
// a Session's new Conn (failover, migration), or a Conn's in-place rejoin
// (a Rejoin nudge answered, when the forwarder may have lost the session).
// A Conn has one built in (Conn.Subscribe); NewSubscriber makes one for a
// Session or any other RTCPWriter. Its methods are safe for concurrent use.
type Subscriber struct {
	w      RTCPWriter
	ssrc   uint32
	resend time.Duration
	conn   func() *Conn // the Conn serving now; nil if unknown

	// mu guards the fields below; never held while writing. Lock order:
	// mu, then the Conn's or Session's own (conn and lastNudge take them).
	mu        sync.Mutex
	cur       protocol.Subscription
	have      bool
	lastSent  time.Time
	lastConn  *Conn
	nudgeSeen time.Time // the Conn's last rejoin nudge already answered by a resend
	st        SubscriberStats

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// SubscriberStats are a Subscriber's counters.
type SubscriberStats struct {
	Sequence uint16 // of the current set
	Sets     uint64 // Subscribe calls that set a new set
	Sent     uint64 // Subscription packets written, repeats included
	Resent   uint64 // repeats (timer, new Conn, rejoin)
	Errors   uint64 // writes that failed
}

// NewSubscriber returns a Subscriber that sends through w, a Session (it
// follows the Session's Conn), a Conn, or any other RTCPWriter (then only
// the timer resends), with ssrc as the APP packet's SSRC (one of the
// device's media SSRCs; the relay does not rely on it). It starts its timer
// goroutine; Close stops it, and so does the end of a Session or Conn.
func NewSubscriber(w RTCPWriter, ssrc uint32) *Subscriber {
	s := newSubscriber(w, ssrc)
	var done <-chan struct{}
	switch w := w.(type) {
	case *Session:
		s.conn, done = w.current, w.Done()
	case *Conn:
		s.conn, done = func() *Conn { return w }, w.Done()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(done)
	}()
	return s
}

func newSubscriber(w RTCPWriter, ssrc uint32) *Subscriber {
	return &Subscriber{w: w, ssrc: ssrc, resend: SubscriptionResend, stop: make(chan struct{})}
}

// Close stops the resends and waits for the goroutine. It is idempotent.
func (s *Subscriber) Close() {
	s.closeOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// Subscribe replaces the set of videos wanted (empty: none) and sends it
// under the next sequence number. A set the format cannot carry (more than
// protocol.MaxSubscriptions entries, a participant twice) is refused with
// the protocol's error and changes nothing. A failed write is returned,
// but the set stands and is sent again with the next resend.
func (s *Subscriber) Subscribe(videos []protocol.VideoSubscription) error {
	next := protocol.Subscription{Videos: slices.Clone(videos)}
	if _, err := protocol.NewRelayApp(s.ssrc, &next); err != nil {
		return fmt.Errorf("client: subscribe: %w", err)
	}
	s.mu.Lock()
	next.Sequence = s.cur.Sequence + 1
	s.cur, s.have = next, true
	s.st.Sets++
	if s.conn != nil && s.lastConn == nil {
		s.lastConn = s.conn()
	}
	s.mu.Unlock()
	return s.send(time.Now(), false)
}

// Resend sends the current set again now (nothing before the first
// Subscribe).
func (s *Subscriber) Resend() error { return s.send(time.Now(), true) }

// Current returns the current set and its sequence number (false before
// the first Subscribe).
func (s *Subscriber) Current() (protocol.Subscription, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur
	cur.Videos = slices.Clone(cur.Videos)
	return cur, s.have
}

// Stats returns the counters.
func (s *Subscriber) Stats() SubscriberStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Sequence = s.cur.Sequence
	return st
}

// send writes the current set; repeat says it is a resend.
func (s *Subscriber) send(now time.Time, repeat bool) error {
	s.mu.Lock()
	if !s.have {
		s.mu.Unlock()
		return nil
	}
	cur := s.cur
	s.lastSent = now
	s.mu.Unlock()
	app, err := protocol.NewRelayApp(s.ssrc, &cur)
	if err == nil {
		err = s.w.WriteRTCP(app)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.st.Errors++
		return fmt.Errorf("client: send subscription: %w", err)
	}
	s.st.Sent++
	if repeat {
		s.st.Resent++
	}
	return nil
}

// run resends until stop or done closes.
func (s *Subscriber) run(done <-chan struct{}) {
	t := time.NewTicker(subscriptionCheck)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-done:
			return
		case now := <-t.C:
			if s.due(now) {
				_ = s.send(now, true) // counted; the next check tries again
			}
		}
	}
}

// due reports whether the set should go again: the resend interval has
// passed, the serving Conn changed, or it rejoined in place since the last
// send.
func (s *Subscriber) due(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.have {
		return false
	}
	if s.conn != nil {
		c := s.conn()
		if c != s.lastConn {
			s.lastConn, s.nudgeSeen = c, time.Time{}
			return true
		}
		// In place: the Conn re-sent its join after a Rejoin nudge, and the
		// forwarder answered it.
		if n := c.lastNudge(); !n.IsZero() && n.After(s.nudgeSeen) && c.lastAnswer().After(n) {
			s.nudgeSeen = n
			return true
		}
	}
	return now.Sub(s.lastSent) >= s.resend
}

// Subscribe tells the relay which videos the device wants now (the whole
// set, replacing the previous one; empty for none) under the next
// sequence number, and keeps it told: the set is sent again every
// SubscriptionResend and right after an in-place rejoin, until the Conn
// ends. A Session does not carry subscriptions across Conns by itself: use
// NewSubscriber on the Session for that.
func (c *Conn) Subscribe(videos []protocol.VideoSubscription) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if c.subs == nil {
		// The reader goroutine is still counted in wg (it ends only after
		// finish set c.err), so this Add cannot race with Close's Wait.
		sub := newSubscriber(c, 0)
		sub.conn = func() *Conn { return c }
		sub.lastConn = c
		c.subs = sub
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			sub.run(c.done)
		}()
	}
	sub := c.subs
	c.mu.Unlock()
	return sub.Subscribe(videos)
}

// Subscription returns the Conn's current video subscriptions and their
// sequence number (false before the first Subscribe).
func (c *Conn) Subscription() (protocol.Subscription, bool) {
	c.mu.Lock()
	sub := c.subs
	c.mu.Unlock()
	if sub == nil {
		return protocol.Subscription{}, false
	}
	return sub.Current()
}
