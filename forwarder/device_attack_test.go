package forwarder_test

import (
	"context"
	"crypto/ed25519"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/protocol"
)

// onPath is an on-path observer between a device and its forwarder: a UDP
// relay that the device takes for the forwarder. It passes every datagram
// both ways, and keeps a copy of every STUN message the device sent and
// every one the forwarder answered, the token and tickets in clear. Its
// socket toward the forwarder is the address the forwarder knows the
// device by, so it can also inject requests from the device's path.
type onPath struct {
	front, back *net.UDPConn // the device's side, the forwarder's side (back guarded by mu)
	fwd         netip.AddrPort
	wg          sync.WaitGroup
	mu          sync.Mutex
	device      netip.AddrPort
	sent, got   [][]byte // STUN from the device, STUN to it
}

func newOnPath(t *testing.T, fwd netip.AddrPort) *onPath {
	t.Helper()
	p := &onPath{fwd: fwd}
	var err error
	p.front, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	p.back, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	p.wg.Add(2)
	go p.pump(p.front, true)
	go p.pump(p.back, false)
	t.Cleanup(func() {
		_ = p.front.Close()
		p.mu.Lock()
		_ = p.back.Close()
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *onPath) addr() netip.AddrPort { return p.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// rebind gives the path a new socket toward the forwarder, as a NAT that
// gives the device a new mapping: the old one is closed.
func (p *onPath) rebind(t *testing.T) {
	t.Helper()
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	p.mu.Lock()
	old := p.back
	p.back = back
	p.wg.Add(1)
	go p.pump(back, false)
	p.mu.Unlock()
	_ = old.Close()
}

func (p *onPath) pump(from *net.UDPConn, fromDevice bool) {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, src, err := from.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := append([]byte(nil), buf[:n]...)
		p.mu.Lock()
		if fromDevice {
			p.device = src
		}
		to, back := p.device, p.back
		if stun.IsMessage(b) {
			if fromDevice {
				p.sent = append(p.sent, b)
			} else {
				p.got = append(p.got, b)
			}
		}
		p.mu.Unlock()
		if fromDevice {
			_, _ = back.WriteToUDPAddrPort(b, p.fwd)
		} else if to.IsValid() {
			_, _ = p.front.WriteToUDPAddrPort(b, to)
		}
	}
}

// captured returns the first request the device sent with a DEVICE-PROOF
// and a COOKIE (its join), and the latest resumption ticket the forwarder
// sent it.
func (p *onPath) captured(t *testing.T) (join *stun.Message, ticket []byte) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.sent {
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if m.Decode() == nil && m.Contains(protocol.AttrDeviceProof) && m.Contains(protocol.AttrCookie) && join == nil {
			join = m
		}
	}
	for _, b := range p.got {
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if m.Decode() != nil {
			continue
		}
		if tk, err := m.Get(protocol.AttrResumeTicket); err == nil {
			ticket = append([]byte(nil), tk...)
		}
	}
	require.NotNil(t, join, "the observer saw the signed join")
	require.NotNil(t, ticket, "the observer saw a resumption ticket")
	return join, ticket
}

// forge rebuilds a captured request with another cookie, the LEAVE flag and
// ticket as given, and MESSAGE-INTEGRITY under the token's key (all an
// observer can compute); the proof is the captured one.
func forge(t *testing.T, m *stun.Message, cookie []byte, leave bool, ticket []byte) []byte {
	t.Helper()
	tok, err := m.Get(protocol.AttrJoinToken)
	require.NoError(t, err)
	user, err := m.Get(stun.AttrUsername)
	require.NoError(t, err)
	proof, err := m.Get(protocol.AttrDeviceProof)
	require.NoError(t, err)
	setters := []stun.Setter{stun.NewTransactionIDSetter(m.TransactionID), stun.BindingRequest,
		stun.NewUsername(string(user)), attr{protocol.AttrJoinToken, tok}}
	if leave {
		setters = append(setters, attr{protocol.AttrLeave, nil})
	}
	setters = append(setters, attr{protocol.AttrCookie, cookie})
	if ticket != nil {
		setters = append(setters, attr{protocol.AttrResumeTicket, ticket})
	}
	setters = append(setters, attr{protocol.AttrDeviceProof, proof}, stun.MessageIntegrity(protocol.IntegrityKey(tok)), stun.Fingerprint)
	out, err := stun.Build(setters...)
	require.NoError(t, err)
	return out.Raw
}

type attr struct {
	t stun.AttrType
	v []byte
}

func (a attr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

// attacker is the observer's own socket.
type attacker struct {
	conn   *net.UDPConn
	fwd    netip.AddrPort
	token  []byte
	cookie []byte
	rtp    int // media datagrams it received
}

func (a *attacker) send(t *testing.T, b []byte) {
	t.Helper()
	_, err := a.conn.WriteToUDPAddrPort(b, a.fwd)
	require.NoError(t, err)
}

// drain reads what came within wait: keeps a cookie offered under the
// token's key, counts media, and returns the success answers (there must
// be none it can read).
func (a *attacker) drain(wait time.Duration) (successes int) {
	buf := make([]byte, 2048)
	_ = a.conn.SetReadDeadline(time.Now().Add(wait))
	for {
		n, _, err := a.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return successes
		}
		if !stun.IsMessage(buf[:n]) {
			a.rtp++
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() != nil {
			continue
		}
		if m.Type == stun.BindingSuccess {
			successes++
		}
		if r, err := protocol.ParseJoinResponse(buf[:n], m.TransactionID, protocol.IntegrityKey(a.token)); err == nil && len(r.Cookie) > 0 {
			a.cookie = r.Cookie
		}
	}
}

// keyed is the request an observer can make without the session key: a
// keepalive (or leave) under its best guess, the token's integrity key.
func (a *attacker) keyed(t *testing.T, leave bool, ticket []byte) []byte {
	t.Helper()
	m, _, err := protocol.BuildDeviceRequest(a.token, protocol.JoinOptions{Cookie: a.cookie, Leave: leave, Ticket: ticket},
		protocol.DeviceAuth{SessionKey: protocol.IntegrityKey(a.token)})
	require.NoError(t, err)
	return m.Raw
}

// ownProof is a fresh proof signed with the attacker's own key.
func (a *attacker) ownProof(t *testing.T, key ed25519.PrivateKey, leave bool, ticket []byte) []byte {
	t.Helper()
	m, _, err := protocol.BuildDeviceRequest(a.token, protocol.JoinOptions{Cookie: a.cookie, Leave: leave, Ticket: ticket},
		protocol.DeviceAuth{Key: key, Counter: uint64(time.Now().UnixMilli()) + 1<<40})
	require.NoError(t, err)
	return m.Raw
}

// flow has from send n RTP packets to to through the forwarder, one
// every millisecond (pacing, not synchronisation), and returns how many
// arrived once all did or 10 s passed.
func flow(t *testing.T, from, to *client.Conn, ssrc uint32, seq uint16, n int) int {
	t.Helper()
	for i := range n {
		require.NoError(t, from.WriteRTP(plainRTP(ssrc, seq+uint16(i))))
		time.Sleep(time.Millisecond)
	}
	got := 0
	deadline := time.After(10 * time.Second)
	for got < n {
		select {
		case p := <-to.Media():
			if len(p.Data) >= 12 && p.Data[1]&0x7f == 111 && uint32(p.Data[8])<<24|uint32(p.Data[9])<<16|uint32(p.Data[10])<<8|uint32(p.Data[11]) == ssrc {
				got++
			}
			p.Release()
		case <-deadline:
			return got
		}
	}
	return got
}

func proofRefused(f *forwarder.Forwarder, reason string) uint64 {
	d := f.Stats().Resume.Device
	for i, n := range forwarder.ProofRefusalNames() {
		if n == reason {
			return d.Refused[i]
		}
	}
	panic("no proof refusal " + reason)
}

// TestObserverOfDeviceTokenCannotHijack is issue 17's on-path session
// hijack, against a device-bound (version 2) token: an observer on the
// device's path has every byte of its join, the token and the resumption
// ticket in clear. From its own address and, on path, from the device's,
// it tries rounds times each to (a) move the session to itself, (b) end
// it with a LEAVE, (c) resume or rejoin with the token and the ticket.
// Every try fails and is counted; the forwarder never moves or ends the
// session, the attacker reads no answer and no media, and the call's media
// flows both ways without a loss before, during and after.
func TestObserverOfDeviceTokenCannotHijack(t *testing.T) {
	r := runRelay(t, nil)
	call := protocol.NewID()
	devKey, err := client.GenerateDeviceKey()
	require.NoError(t, err)
	token, err := protocol.SignToken(r.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(), Class: protocol.ClassGroup,
		MaxSize: 3, Expiry: time.Now().Add(time.Hour), DeviceKey: devKey.Public().(ed25519.PublicKey)})
	require.NoError(t, err)
	path := newOnPath(t, r.f.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	victim, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{path.addr()}, Token: token, DeviceKey: devKey, LocalAddr: loopback})
	require.NoError(t, err)
	defer victim.Close()
	peer := dial(t, r.mint(t, call, protocol.ClassGroup, 3), r.f.Addr()) // a version 1 token still joins
	const n = 200
	before := [2]int{flow(t, victim, peer, 0x71c7000, 1, n), flow(t, peer, victim, 0x9ee7000, 1, n)}
	require.Equal(t, [2]int{n, n}, before, "media before the attack")

	join, ticket := path.captured(t)
	// Another loopback address: the forwarder's per-address request limit
	// must not be what stops the attacker.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	require.NoError(t, err)
	defer conn.Close()
	a := &attacker{conn: conn, fwd: r.f.Addr(), token: token}
	a.send(t, a.keyed(t, false, nil)) // any request earns the attacker a cookie of its own address
	a.drain(300 * time.Millisecond)
	require.NotNil(t, a.cookie, "the address check answered the attacker")
	_, thiefKey, err := protocol.GenerateSigningKey()
	require.NoError(t, err)

	changes, joins := r.f.Stats().AddressChanges, r.f.Stats().Joins
	missing0, sig0, integ0, stale0 := proofRefused(r.f, "missing"), proofRefused(r.f, "signature"), proofRefused(r.f, "integrity"), proofRefused(r.f, "stale")
	const rounds = 20
	successes := 0
	var during [2]int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the call goes on throughout
		defer wg.Done()
		during = [2]int{flow(t, victim, peer, 0x71c7000, 1000, n), flow(t, peer, victim, 0x9ee7000, 1000, n)}
	}()
	joinCookie, err := join.Get(protocol.AttrCookie)
	require.NoError(t, err)
	for i := range rounds {
		// (a) move: the captured join replayed as is (its cookie is the
		// device's path's), with the attacker's own cookie (the proof no
		// longer verifies), a keepalive under the token's key, and a proof
		// of the attacker's own key.
		a.send(t, join.Raw)
		a.send(t, forge(t, join, a.cookie, false, nil))
		a.send(t, a.keyed(t, false, nil))
		a.send(t, a.ownProof(t, thiefKey, false, nil))
		// (b) leave: from the attacker, and injected on the device's path
		// (the captured join's cookie is good there).
		a.send(t, a.keyed(t, true, nil))
		a.send(t, a.ownProof(t, thiefKey, true, nil))
		if i%2 == 0 { // within the limit on a member's address
			inject(t, path, forge(t, join, joinCookie, true, nil))
			inject(t, path, a.keyed(t, true, nil))
		}
		// (c) resume or rejoin with the token and the ticket.
		a.send(t, a.keyed(t, false, ticket))
		a.send(t, a.ownProof(t, thiefKey, false, ticket))
		a.send(t, forge(t, join, a.cookie, false, ticket))
		successes += a.drain(20 * time.Millisecond)
	}
	wg.Wait()
	successes += a.drain(300 * time.Millisecond)
	after := [2]int{flow(t, victim, peer, 0x71c7000, 2000, n), flow(t, peer, victim, 0x9ee7000, 2000, n)}

	st := r.f.Stats()
	missing, sig, integ := proofRefused(r.f, "missing")-missing0, proofRefused(r.f, "signature")-sig0, proofRefused(r.f, "integrity")-integ0
	stale := proofRefused(r.f, "stale") - stale0
	require.Zero(t, successes, "success answers to the attacker")
	require.Zero(t, a.rtp, "media reached the attacker")
	require.Equal(t, changes, st.AddressChanges, "the session never moved")
	require.Equal(t, joins, st.Joins, "no session was admitted for the attacker")
	require.Equal(t, 2, st.Sessions, "the victim's session lives")
	require.NoError(t, victim.Err())
	require.Equal(t, uint64(3*rounds), missing, "requests without a proof from the attacker, counted")
	require.Equal(t, uint64(3*rounds), sig, "proofs of the attacker's own key, counted")
	require.Equal(t, uint64(2*rounds+rounds/2), stale, "the captured proof replayed with another cookie, ticket or LEAVE, counted")
	require.Equal(t, uint64(rounds/2), integ, "leaves injected on path without the session key, counted")
	require.Equal(t, [2]int{n, n}, during, "media during the attack")
	require.Equal(t, [2]int{n, n}, after, "media after the attack")
	tries := 9*rounds + 2*(rounds/2)
	t.Logf("%d rounds, %d attempts (move, leave, resume): attacker success 0/%d; refused: missing proof %d, bad signature %d, stale proof %d, session integrity %d; packets received of %d sent, victim->peer and peer->victim: before %v, during %v, after %v",
		rounds, tries, tries, missing, sig, stale, integ, n, before, during, after)
}

// inject sends b from the device's path, as the on-path observer can.
func inject(t *testing.T, p *onPath, b []byte) {
	t.Helper()
	p.mu.Lock()
	back := p.back
	p.mu.Unlock()
	_, err := back.WriteToUDPAddrPort(b, p.fwd)
	require.NoError(t, err)
}
