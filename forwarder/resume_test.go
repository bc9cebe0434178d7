package forwarder

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// fakeClock is a clock the test moves by hand; the forwarder's control
// goroutine reads it concurrently.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Unix(time.Now().Unix(), 0).UnixNano()) // on a whole second, as token expiries are
	return c
}

func (c *fakeClock) Now() time.Time                  { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Add(d time.Duration)             { c.ns.Add(int64(d)) }
func (c *fakeClock) token(d time.Duration) time.Time { return c.Now().Add(d) }

// resumeRelays are forwarders of one cluster (one cluster key, one state
// store: the store's in-memory twin, one signing service), without trunk or
// NATS, on one fake clock.
type resumeRelays struct {
	a, b  *testRelay
	clock *fakeClock
	ckey  protocol.ClusterKey
	key   *protocol.TicketKey
	store *statestore.Memory
	pub   ed25519.PublicKey
	priv  ed25519.PrivateKey
}

func startResumeRelays(t *testing.T) *resumeRelays {
	t.Helper()
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	rr := &resumeRelays{clock: newFakeClock(), ckey: k, key: k.TicketKey(), store: statestore.NewMemory(statestore.Config{}), pub: pub, priv: priv}
	rr.a = rr.start(t, "fwd-a", true, nil)
	rr.b = rr.start(t, "fwd-b", true, nil)
	return rr
}

// start runs one more forwarder of the cluster (with the store or
// without), with mod's changes.
func (rr *resumeRelays) start(t *testing.T, id string, store bool, mod func(*Config)) *testRelay {
	t.Helper()
	v, err := protocol.NewTokenVerifier(rr.pub)
	require.NoError(t, err)
	r := startRelay(t, func(c *Config) {
		c.Verifier, c.Now, c.TicketLifetime = v, rr.clock.Now, 10*time.Second
		c.Cluster.Key = rr.ckey
		if store {
			c.Cluster.ID, c.Cluster.Store = id, rr.store
		}
		if mod != nil {
			mod(c)
		}
	})
	r.priv = rr.priv
	return r
}

// signed mints a token of call for participant, expiring at exp.
func (rr *resumeRelays) signed(t *testing.T, call, participant protocol.ID, exp time.Time) []byte {
	t.Helper()
	b, err := protocol.SignToken(rr.priv, protocol.Token{CallID: call, ParticipantID: participant,
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: exp})
	require.NoError(t, err)
	return b
}

// bindWith sends d's join or keepalive with ticket (nil: none), repeating
// it after an address check, and returns the verified answer.
func bindWith(d *rawDevice, ticket []byte) protocol.JoinResponse {
	d.t.Helper()
	for try := 0; ; try++ {
		m, err := protocol.BuildJoinRequest(d.token, protocol.JoinOptions{Cookie: d.cookie, Ticket: ticket})
		require.NoError(d.t, err)
		d.send(m.Raw)
		raw, ok := d.recvSTUN(2 * time.Second)
		require.True(d.t, ok, "no answer")
		resp, err := protocol.ParseJoinResponse(raw, m.TransactionID, protocol.IntegrityKey(d.token))
		require.NoError(d.t, err)
		if resp.Code != protocol.CodeUnauthorized || len(resp.Cookie) == 0 || try == 2 {
			return resp
		}
		d.cookie = resp.Cookie
	}
}

// TestTicketIssueAndRefresh: the join answer carries a ticket bound to the
// participant and its token; keepalive answers carry none until a fifth of
// the lifetime has passed, then a new one; a keepalive with a new token
// gets one at once.
func TestTicketIssueAndRefresh(t *testing.T) {
	rr := startResumeRelays(t)
	call, who := protocol.NewID(), protocol.NewID()
	joined := rr.clock.Now()
	d := newRawDevice(t, rr.a.f.Addr(), rr.signed(t, call, who, rr.clock.token(time.Hour)))
	resp := bindWith(d, nil)
	require.True(t, resp.OK)
	require.NotEmpty(t, resp.Ticket, "the join answer carries a ticket")
	tk, err := rr.key.Open(resp.Ticket, joined)
	require.NoError(t, err, "another forwarder of the cluster opens it")
	require.Equal(t, call, tk.CallID)
	require.Equal(t, who, tk.ParticipantID)
	require.Equal(t, protocol.ClassGroup, tk.Class)
	require.Equal(t, uint16(8), tk.MaxSize)
	require.Equal(t, joined.UnixMilli(), tk.IssuedAt.UnixMilli())
	require.Equal(t, joined.Add(10*time.Second).UnixMilli(), tk.ValidUntil.UnixMilli())
	require.Equal(t, protocol.BindToken(d.token), tk.Binding)

	rr.clock.Add(1900 * time.Millisecond) // the refresh is due at 2 s
	resp = bindWith(d, resp.Ticket)
	require.True(t, resp.OK)
	require.Nil(t, resp.Ticket, "not due yet")
	rr.clock.Add(100 * time.Millisecond)
	resp = bindWith(d, nil)
	require.True(t, resp.OK)
	tk, err = rr.key.Open(resp.Ticket, rr.clock.Now())
	require.NoError(t, err, "a refreshed ticket")
	require.Equal(t, rr.clock.Now().UnixMilli(), tk.IssuedAt.UnixMilli())

	// A new token (the application refreshed it) is verified and gets a
	// ticket bound to it at once.
	rr.clock.Add(time.Second)
	d.token = rr.signed(t, call, who, rr.clock.token(2*time.Hour))
	resp = bindWith(d, nil)
	require.True(t, resp.OK)
	tk, err = rr.key.Open(resp.Ticket, rr.clock.Now())
	require.NoError(t, err)
	require.Equal(t, protocol.BindToken(d.token), tk.Binding)
	require.Equal(t, uint64(3), rr.a.f.Stats().Resume.TicketsIssued, "the join, the refresh, the new token")
}

// TestResumeOnAnotherForwarder: a participant whose token has expired is
// admitted by its ticket on another forwarder of the cluster, as a rejoin,
// into the call it was admitted to; an expired token alone is refused.
func TestResumeOnAnotherForwarder(t *testing.T) {
	rr := startResumeRelays(t)
	call, who := protocol.NewID(), protocol.NewID()
	token := rr.signed(t, call, who, rr.clock.token(time.Second))
	d := newRawDevice(t, rr.a.f.Addr(), token)
	resp := bindWith(d, nil)
	require.True(t, resp.OK)
	ticket := resp.Ticket
	waitPlaced(t, rr.store, call, who, "fwd-a")

	rr.clock.Add(2 * time.Second) // the token expires; the session goes on
	resp = bindWith(d, nil)
	require.True(t, resp.OK, "a live session keeps its expired token")

	// The forwarder dies; the device goes to another.
	moved := newRawDevice(t, rr.b.f.Addr(), token)
	resp = bindWith(moved, nil)
	require.Equal(t, protocol.CodeUnauthorized, resp.Code)
	require.Equal(t, "token expired and no resumption ticket", resp.Reason)
	resp = bindWith(moved, ticket)
	require.True(t, resp.OK, "refused: %d %s", resp.Code, resp.Reason)
	tk, err := rr.key.Open(resp.Ticket, rr.clock.Now())
	require.NoError(t, err, "the resumed session gets its own ticket")
	require.Equal(t, who, tk.ParticipantID)
	s := rr.b.f.Stats()
	require.Equal(t, uint64(1), s.Resume.Resumed)
	require.Equal(t, uint64(1), s.Resume.Refused[resumeNoTicket])
	require.Equal(t, 1, s.Sessions)
	waitPlaced(t, rr.store, call, who, "fwd-b")
}

// TestResumeRefusals: each bad ticket is refused 401 with its own reason,
// counted by reason in /metrics, and admits nothing.
func TestResumeRefusals(t *testing.T) {
	rr := startResumeRelays(t)
	call, who, other := protocol.NewID(), protocol.NewID(), protocol.NewID()
	token := rr.signed(t, call, who, rr.clock.token(time.Second))
	d := newRawDevice(t, rr.a.f.Addr(), token)
	resp := bindWith(d, nil)
	require.True(t, resp.OK)
	good := resp.Ticket
	e := newRawDevice(t, rr.a.f.Addr(), rr.signed(t, call, other, rr.clock.token(time.Hour)))
	resp = bindWith(e, nil)
	require.True(t, resp.OK)
	othersTicket := resp.Ticket
	waitPlaced(t, rr.store, call, who, "fwd-a")

	lone := rr.start(t, "", false, func(c *Config) { c.Cluster.Key = protocol.ClusterKey{} }) // no cluster key: a key of its own
	loneDev := newRawDevice(t, lone.f.Addr(), rr.signed(t, call, who, rr.clock.token(time.Hour)))
	resp = bindWith(loneDev, nil)
	require.True(t, resp.OK)
	foreign := resp.Ticket
	forged := bytes.Clone(good)
	forged[len(forged)-1] ^= 1
	rr.clock.Add(2 * time.Second) // the token has expired

	tests := []struct {
		name, reason string
		why          resumeRefusal
		ticket       []byte
	}{
		{"forged", "resumption ticket forged", resumeForged, forged},
		{"foreign", "resumption ticket from another cluster or a restarted forwarder", resumeForeign, foreign},
		{"another participant's", "resumption ticket is for another participant or token", resumeMismatch, othersTicket},
		{"malformed", "resumption ticket malformed", resumeMalformed, good[:20]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newRawDevice(t, rr.b.f.Addr(), token)
			resp := bindWith(dev, tc.ticket)
			require.Equal(t, protocol.CodeUnauthorized, resp.Code)
			require.Empty(t, resp.Cookie)
			require.Equal(t, tc.reason, resp.Reason)
			require.Equal(t, uint64(1), rr.b.f.Stats().Resume.Refused[tc.why])
		})
	}
	rr.clock.Add(10 * time.Second) // past the ticket's valid-until
	dev := newRawDevice(t, rr.b.f.Addr(), token)
	resp = bindWith(dev, good)
	require.Equal(t, protocol.CodeUnauthorized, resp.Code)
	require.Equal(t, "resumption ticket expired", resp.Reason)
	require.Zero(t, rr.b.f.Stats().Sessions, "no refused ticket admitted anyone")

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rr.b.f.Collector())
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP callrelay_forwarder_resumption_refusals_total Resumptions refused (401), by reason: malformed, foreign (another cluster or a restarted forwarder), forged, expired, mismatch (another participant or token), call_ended, no_ticket (an expired token alone).
# TYPE callrelay_forwarder_resumption_refusals_total counter
callrelay_forwarder_resumption_refusals_total{reason="call_ended"} 0
callrelay_forwarder_resumption_refusals_total{reason="expired"} 1
callrelay_forwarder_resumption_refusals_total{reason="forged"} 1
callrelay_forwarder_resumption_refusals_total{reason="foreign"} 1
callrelay_forwarder_resumption_refusals_total{reason="malformed"} 1
callrelay_forwarder_resumption_refusals_total{reason="mismatch"} 1
callrelay_forwarder_resumption_refusals_total{reason="no_ticket"} 0
`), "callrelay_forwarder_resumption_refusals_total"))
}

// TestTicketStartsNoCall: once everyone has left, a ticket of the call
// resumes no one: it cannot start the call again.
func TestTicketStartsNoCall(t *testing.T) {
	rr := startResumeRelays(t)
	call, who := protocol.NewID(), protocol.NewID()
	token := rr.signed(t, call, who, rr.clock.token(time.Second))
	d := newRawDevice(t, rr.a.f.Addr(), token)
	resp := bindWith(d, nil)
	require.True(t, resp.OK)
	ticket := resp.Ticket
	waitPlaced(t, rr.store, call, who, "fwd-a")
	require.True(t, d.bind(true).OK, "left")
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, err := rr.store.Get(context.Background(), call); err == nil {
			return errNotYet
		}
		return nil
	})
	rr.clock.Add(2 * time.Second)
	for _, r := range []*testRelay{rr.b, rr.a} {
		dev := newRawDevice(t, r.f.Addr(), token)
		resp := bindWith(dev, ticket)
		require.Equal(t, protocol.CodeUnauthorized, resp.Code)
		require.Equal(t, "call has ended: a resumption ticket cannot start a call", resp.Reason)
		require.Equal(t, uint64(1), r.f.Stats().Resume.Refused[resumeCallEnded])
		require.Zero(t, r.f.Stats().Sessions)
	}
}

// TestTicketMakesARejoin: under throttling, a join with a valid token is
// classified by its ticket as a rejoin at once (no store to ask here);
// without one, a new call is refused.
func TestTicketMakesARejoin(t *testing.T) {
	rr := startResumeRelays(t)
	call, who := protocol.NewID(), protocol.NewID()
	token := rr.signed(t, call, who, rr.clock.token(time.Hour))
	d := newRawDevice(t, rr.a.f.Addr(), token)
	resp := bindWith(d, nil)
	require.True(t, resp.OK)
	ticket := resp.Ticket
	c := rr.start(t, "", false, func(c *Config) {
		c.Load.CapacitySessions, c.Load.CPUCores, c.Load.QueueDropsFull = 1, 1e6, 1e9 // one session: level 4
		c.Load.HoldDown = time.Minute
	})
	first := newRawDevice(t, c.f.Addr(), rr.signed(t, protocol.NewID(), protocol.NewID(), rr.clock.token(time.Hour)))
	require.True(t, bindWith(first, nil).OK)
	require.Equal(t, ThrottleSecondParty, c.f.Stats().ThrottleLevel)

	fresh := newRawDevice(t, c.f.Addr(), rr.signed(t, protocol.NewID(), protocol.NewID(), rr.clock.token(time.Hour)))
	resp = bindWith(fresh, nil)
	require.Equal(t, protocol.CodeInsufficientCapacity, resp.Code, "a new call is refused at this level")
	back := newRawDevice(t, c.f.Addr(), token)
	resp = bindWith(back, ticket)
	require.True(t, resp.OK, "refused: %d %s", resp.Code, resp.Reason)
	s := c.f.Stats()
	require.Equal(t, uint64(1), s.Resume.TicketRejoins)
	require.Equal(t, uint64(1), s.Admissions[JoinRejoin])
}

var errNotYet = errors.New("not yet")

// waitPlaced waits until the store places participant of call on fwd.
func waitPlaced(t *testing.T, st statestore.Store, call, participant protocol.ID, fwd string) {
	t.Helper()
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		rec, err := st.Get(context.Background(), call)
		if err != nil {
			return err
		}
		if m, ok := rec.Members[participant]; !ok || m.Forwarder != fwd {
			return errNotYet
		}
		return nil
	})
}
