package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Sessions that outlive their join tokens (protocol/README.md 2.1): the
// client library and real forwarders, over real sockets.

// shortToken mints a token of call for a new participant that expires
// within about lifetime (token expiries are whole seconds).
func shortToken(t *testing.T, priv ed25519.PrivateKey, call protocol.ID, participant protocol.ID, lifetime time.Duration) []byte {
	t.Helper()
	b, err := protocol.SignToken(priv, protocol.Token{CallID: call, ParticipantID: participant,
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(lifetime)})
	require.NoError(t, err)
	return b
}

func expiryOf(t *testing.T, token []byte) time.Time {
	t.Helper()
	tk, err := protocol.DecodeToken(token)
	require.NoError(t, err)
	return tk.Expiry
}

// waitExpired waits until every token has expired and every session holds
// a resumption ticket.
func waitExpired(t *testing.T, tokens [][]byte, ms ...*calltest.Member) {
	t.Helper()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, tok := range tokens {
			if exp := expiryOf(t, tok); !time.Now().After(exp) {
				return fmt.Errorf("token valid until %s", exp.Format(time.TimeOnly))
			}
		}
		for i, m := range ms {
			if !m.S.Stats().HasTicket {
				return fmt.Errorf("member %d holds no ticket", i)
			}
		}
		return nil
	})
}

func refusals(f *forwarder.Forwarder, reason string) uint64 {
	return f.Stats().Resume.Refused[slices.Index(forwarder.ResumeRefusalNames(), reason)]
}

// TestSessionOutlivesTokenThroughFailover: two members whose tokens have
// expired; the forwarder of one stops; it fails over to the other
// forwarder, which resumes it by its ticket, and they hear each other again.
func TestSessionOutlivesTokenThroughFailover(t *testing.T) {
	e := newClusterEnv(t)
	nodes := []*clusterNode{e.start(t, "fwd-a"), e.start(t, "fwd-b")}
	all := []netip.AddrPort{nodes[0].f.Addr(), nodes[1].f.Addr()}
	call := protocol.NewID()
	tokens := [][]byte{shortToken(t, e.priv, call, protocol.NewID(), 2*time.Second), shortToken(t, e.priv, call, protocol.NewID(), 2*time.Second)}
	speaker := calltest.JoinConfig(t, client.Config{Forwarders: all, Token: tokens[0]}, 1)
	victim, other := nodes[0], nodes[1]
	if speaker.S.Forwarder() != victim.f.Addr() {
		victim, other = other, victim
	}
	listener := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{other.f.Addr()}, Token: tokens[1]}, 2)
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{speaker, listener}, stop)
	allHearAll(t, []*member{speaker, listener}, time.Now(), 5*time.Second)
	waitExpired(t, tokens, speaker, listener)
	allHearAll(t, []*member{speaker, listener}, time.Now(), 5*time.Second)

	victim.stop()
	calltest.WaitForwarder(t, speaker, other.f.Addr(), 10*time.Second)
	allHearAll(t, []*member{speaker, listener}, time.Now(), 10*time.Second)
	require.Equal(t, uint64(1), other.f.Stats().Resume.Resumed, "resumed by its ticket")
	require.Equal(t, uint64(1), speaker.S.Stats().Failovers)
}

// loneNode is a forwarder that shares nothing with others: no cluster key
// (it seals tickets with a key of its own), no store.
type loneNode struct {
	f    *forwarder.Forwarder
	stop func() // stops Run and waits for it
}

func startLone(t *testing.T, priv ed25519.PrivateKey, name string) *loneNode {
	t.Helper()
	v, err := protocol.NewTokenVerifier(priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 1, zaptest.NewLogger(t).Named(name)
	cfg.KeepaliveInterval, cfg.IdleTimeout = 100*time.Millisecond, time.Second
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	var once sync.Once
	n := &loneNode{f: f, stop: func() { once.Do(func() { cancel(); <-done }) }}
	t.Cleanup(n.stop)
	return n
}

// lonePair starts two lone forwarders and a signing key they trust.
func lonePair(t *testing.T) (ed25519.PrivateKey, []*loneNode) {
	t.Helper()
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	return priv, []*loneNode{startLone(t, priv, "lone-a"), startLone(t, priv, "lone-b")}
}

// onAndOff returns the node serving s first, the other second.
func onAndOff(s *client.Session, nodes []*loneNode) (*loneNode, *loneNode) {
	if s.Forwarder() == nodes[0].f.Addr() {
		return nodes[0], nodes[1]
	}
	return nodes[1], nodes[0]
}

// TestSessionFinalRefusalEndsAtOnce: a participant whose token has expired
// loses its forwarder; the other forwarder refuses its ticket (sealed by
// another forwarder's own key) and there is no fresh token: the Session
// ends at once with ErrUnauthorized, after one refusal, although its
// re-join timeout is ten minutes.
func TestSessionFinalRefusalEndsAtOnce(t *testing.T) {
	for _, withSource := range []bool{false, true} {
		t.Run(fmt.Sprintf("token source %v", withSource), func(t *testing.T) {
			priv, nodes := lonePair(t)
			tok := shortToken(t, priv, protocol.NewID(), protocol.NewID(), 2*time.Second)
			cfg := client.Config{Forwarders: []netip.AddrPort{nodes[0].f.Addr(), nodes[1].f.Addr()}, Token: tok, RejoinTimeout: 10 * time.Minute}
			var asked atomic.Int32
			if withSource {
				cfg.TokenSource = func(context.Context) ([]byte, error) {
					asked.Add(1)
					return nil, errors.New("signalling service unreachable")
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cfg.LocalAddr, cfg.FailoverAfter = calltest.Loopback, 300*time.Millisecond
			s, err := client.Join(ctx, cfg)
			require.NoError(t, err)
			defer s.Close()
			on, off := onAndOff(s, nodes)
			waitExpired(t, [][]byte{tok}, calltest.Watch(t, s, 1))
			on.stop()
			testenv.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
				select {
				case <-s.Done():
					return nil
				default:
					return errors.New("the session still re-joins")
				}
			})
			require.ErrorIs(t, s.Err(), client.ErrUnauthorized)
			require.ErrorIs(t, s.Err(), client.ErrSessionLost)
			require.Equal(t, uint64(1), refusals(off.f, "foreign"), "refused once, not retried")
			require.Zero(t, off.f.Stats().Sessions)
			if withSource {
				require.NotZero(t, asked.Load(), "the TokenSource was asked")
				require.ErrorContains(t, s.Err(), "signalling service unreachable")
			}
			t.Logf("ended with: %v", s.Err())
		})
	}
}

// TestSessionTokenSource: the Session renews its token before it expires,
// keepalives carry the new one and the forwarder binds new tickets to it;
// when a re-join is refused 401, a fresh token from the source gets it in.
func TestSessionTokenSource(t *testing.T) {
	priv, nodes := lonePair(t)
	call, who := protocol.NewID(), protocol.NewID()
	var open atomic.Bool
	open.Store(true)
	var last atomic.Pointer[[]byte] // the last token given
	source := func(context.Context) ([]byte, error) {
		if !open.Load() {
			return nil, errors.New("signalling service unreachable")
		}
		tok := shortToken(t, priv, call, who, 2*time.Second)
		last.Store(&tok)
		return tok, nil
	}
	first := shortToken(t, priv, call, who, 2*time.Second)
	last.Store(&first)
	m := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{nodes[0].f.Addr(), nodes[1].f.Addr()},
		Token: first, TokenSource: source}, 1)
	on, off := onAndOff(m.S, nodes)
	// Through every refresh the session holds a ticket: the old token's
	// until the forwarder has bound one to the new token.
	lapses := 0
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if !m.S.Stats().HasTicket {
			lapses++
		}
		if n := m.S.Stats().TokenRefreshes; n < 3 {
			return fmt.Errorf("%d tokens taken", n)
		}
		if n := on.f.Stats().Resume.TicketsIssued; n < 4 {
			return fmt.Errorf("%d tickets issued: one per token", n)
		}
		return nil
	})
	require.Zero(t, m.S.Stats().Failovers, "the session lived on, token after token")
	require.Zero(t, lapses, "polls that found no ticket held")
	require.True(t, m.S.Stats().HasTicket)

	// The source goes away until the session's token has expired; then the
	// forwarder does. The other refuses the ticket (not its key); the
	// source is back, and its fresh token gets the session in.
	open.Store(false)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if exp := expiryOf(t, *last.Load()); !time.Now().After(exp) {
			return fmt.Errorf("the last token is valid until %s", exp.Format(time.TimeOnly))
		}
		return nil
	})
	open.Store(true)
	on.stop()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if m.S.Forwarder() != off.f.Addr() || off.f.Stats().Sessions != 1 {
			return errors.New("not on the other forwarder yet")
		}
		return nil
	})
	select {
	case <-m.S.Done():
		t.Fatalf("session ended: %v", m.S.Err())
	default:
	}
	st := m.S.Stats()
	require.NotZero(t, st.TokenErrors)
	t.Logf("tokens taken %d, failed refreshes %d; the other forwarder refused %d foreign tickets",
		st.TokenRefreshes, st.TokenErrors, refusals(off.f, "foreign"))
}

// TestSessionResumesOnOldTicket: a Session's token is refreshed just as its
// forwarder dies, so no forwarder binds a ticket to the new token, and the
// other forwarder is out of reach until the new token has expired too; the
// TokenSource is gone by then. The Session kept the old token's ticket: it
// comes back on the other forwarder with the old token and that ticket.
func TestSessionResumesOnOldTicket(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	// b is reached through a link that drops everything until it is opened.
	dark := linkem.Profile{Loss: 1}
	link, err := linkem.New(b.f.Addr(), dark, dark, 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = link.Close() })
	call, who := protocol.NewID(), protocol.NewID()
	listener := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{b.f.Addr()},
		Token: shortToken(t, e.priv, call, protocol.NewID(), time.Minute)}, 2)

	var asked atomic.Int32
	var fresh atomic.Pointer[[]byte]
	source := func(context.Context) ([]byte, error) {
		if asked.Add(1) > 1 {
			return nil, errors.New("signalling service unreachable")
		}
		a.stop() // before any request can carry the new token
		tok := shortToken(t, e.priv, call, who, 2*time.Second)
		fresh.Store(&tok)
		return tok, nil
	}
	speaker := calltest.JoinConfig(t, client.Config{Forwarders: []netip.AddrPort{a.f.Addr(), link.Addr()},
		Token: shortToken(t, e.priv, call, who, 2*time.Second), TokenSource: source, RejoinTimeout: time.Minute}, 1)
	require.Equal(t, a.f.Addr(), speaker.S.Forwarder())
	require.True(t, speaker.S.Stats().HasTicket, "the join answer brought one")
	stop := make(chan struct{})
	defer close(stop)
	talk(t, []*member{speaker, listener}, stop)

	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		tok := fresh.Load()
		if tok == nil {
			return errors.New("no fresh token taken yet")
		}
		if exp := expiryOf(t, *tok); !time.Now().After(exp) {
			return fmt.Errorf("the fresh token is valid until %s", exp.Format(time.TimeOnly))
		}
		return nil
	})
	st := speaker.S.Stats()
	require.Equal(t, uint64(1), st.TokenRefreshes)
	require.True(t, st.HasTicket, "the old token's ticket, kept")
	require.Zero(t, b.f.Stats().Resume.Resumed, "b was out of reach")

	opened := time.Now()
	link.SetUp(linkem.Profile{})
	link.SetDown(linkem.Profile{})
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-speaker.S.Done():
			return fmt.Errorf("session ended: %w", speaker.S.Err())
		default:
		}
		if speaker.S.Forwarder() != link.Addr() || b.f.Stats().Sessions != 2 {
			return errors.New("not back on b yet")
		}
		return nil
	})
	require.Equal(t, uint64(1), b.f.Stats().Resume.Resumed, "resumed by the old token's ticket")
	require.Equal(t, uint64(1), speaker.S.Stats().Failovers)
	allHearAll(t, []*member{speaker, listener}, opened, 10*time.Second)
}
