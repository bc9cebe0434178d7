package forwarder_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // MESSAGE-INTEGRITY is HMAC-SHA1 (RFC 8489 14.5)
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// The wire spec's conformance tests. protocol/README.md is the contract
// between devices and forwarders; these tests drive a real forwarder over
// real UDP sockets with nothing but the byte layouts of the spec's own
// examples, the fenced blocks marked "```hex example:NAME", read from the
// README at test time, so the spec and the relay cannot drift apart. The
// relay's answers are compared byte for byte with the examples, after
// putting in what differs by necessity: the forwarder's random cookie, the
// test socket's address in XOR-MAPPED-ADDRESS, and the MESSAGE-INTEGRITY and
// FINGERPRINT computed over them as the spec says.
//
// Nothing here uses the protocol package's encoders: STUN is written and
// read by the few lines below, from RFC 8489 and README section 3, as a
// device written from the spec alone would. (protocol only builds the
// forwarder's token verifier, which is configuration, not wire.)

const specPath = "../protocol/README.md"

// specExamples returns the README's marked examples by name. Each line of
// a block is hex bytes separated by single spaces, then, after two spaces
// or more, a comment; a line that starts with spaces is a comment only,
// and "..." stands for bytes the example leaves out (an encrypted payload).
func specExamples(t testing.TB) map[string][]byte {
	t.Helper()
	f, err := os.Open(specPath)
	require.NoError(t, err)
	defer f.Close()
	ex := map[string][]byte{}
	var name string
	var cur []byte
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case name == "" && strings.HasPrefix(line, "```hex example:"):
			name = strings.TrimPrefix(line, "```hex example:")
			require.NotContains(t, ex, name, "README line %d: example %q twice", n, name)
			cur = []byte{}
		case name == "":
		case line == "```":
			require.NotEmpty(t, cur, "README example %q is empty", name)
			ex[name], name = cur, ""
		default:
			data, _, _ := strings.Cut(line, "  ")
			if data == "" || data == "..." {
				continue
			}
			for _, h := range strings.Split(data, " ") {
				b, err := hex.DecodeString(h)
				require.True(t, err == nil && len(b) == 1, "README line %d (example %s): %q is not a hex byte", n, name, h)
				cur = append(cur, b[0])
			}
		}
	}
	require.NoError(t, sc.Err())
	require.Empty(t, name, "README example %q is not closed", name)
	return ex
}

// STUN as README section 3 and RFC 8489 define it.
const (
	stunMagic       = 0x2112A442
	attrUsername    = 0x0006
	attrIntegrity   = 0x0008
	attrErrorCode   = 0x0009
	attrXORMapped   = 0x0020
	attrFingerprint = 0x8028
	attrAlternate   = 0x8023
	attrJoinToken   = 0xC001
	attrCookie      = 0xC005
	attrTicket      = 0xC006
)

type stunAttr struct {
	typ uint16
	val []byte
}

type stunMsg struct {
	typ   uint16
	tid   [12]byte
	attrs []stunAttr
}

// parseSTUN reads a message: the header, then type-length-value
// attributes, each padded with zero bytes to a multiple of 4.
func parseSTUN(b []byte) (stunMsg, error) {
	var m stunMsg
	if len(b) < 20 || b[0]>>6 != 0 || binary.BigEndian.Uint32(b[4:8]) != stunMagic {
		return m, errors.New("not a STUN message")
	}
	if n := int(binary.BigEndian.Uint16(b[2:4])); n != len(b)-20 || n%4 != 0 {
		return m, fmt.Errorf("length field %d, %d bytes after the header", n, len(b)-20)
	}
	m.typ = binary.BigEndian.Uint16(b[0:2])
	copy(m.tid[:], b[8:20])
	for off := 20; off < len(b); {
		if off+4 > len(b) {
			return m, errors.New("attribute header cut short")
		}
		typ, n := binary.BigEndian.Uint16(b[off:]), int(binary.BigEndian.Uint16(b[off+2:]))
		end := off + 4 + (n+3)&^3
		if end > len(b) {
			return m, fmt.Errorf("attribute %#04x runs past the end", typ)
		}
		if !bytes.Equal(b[off+4+n:end], make([]byte, end-off-4-n)) {
			return m, fmt.Errorf("attribute %#04x: padding is not zero", typ)
		}
		m.attrs = append(m.attrs, stunAttr{typ, b[off+4 : off+4+n]})
		off = end
	}
	return m, nil
}

// encode writes m; MESSAGE-INTEGRITY and FINGERPRINT attributes are
// computed, not copied: HMAC-SHA1 with key over the message before it with
// the length field counting up to and including it, and the CRC-32 of the
// message before it XOR 0x5354554e, the length counting it.
func (m stunMsg) encode(key []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, m.typ)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, stunMagic)
	b = append(b, m.tid[:]...)
	setLen := func(n int) { binary.BigEndian.PutUint16(b[2:4], uint16(n)) }
	add := func(typ uint16, v []byte) {
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		b = append(b, v...)
		b = append(b, make([]byte, (4-len(v)%4)%4)...)
	}
	for _, a := range m.attrs {
		switch a.typ {
		case attrIntegrity:
			setLen(len(b) - 20 + 24)
			mac := hmac.New(sha1.New, key)
			mac.Write(b)
			add(a.typ, mac.Sum(nil))
		case attrFingerprint:
			setLen(len(b) - 20 + 8)
			add(a.typ, binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(b)^0x5354554e))
		default:
			add(a.typ, a.val)
		}
	}
	setLen(len(b) - 20)
	return b
}

func (m stunMsg) get(typ uint16) ([]byte, bool) {
	for _, a := range m.attrs {
		if a.typ == typ {
			return a.val, true
		}
	}
	return nil, false
}

// with returns a copy of m with the value of its attribute typ replaced.
func (m stunMsg) with(t testing.TB, typ uint16, v []byte) stunMsg {
	t.Helper()
	c := m
	c.attrs = append([]stunAttr(nil), m.attrs...)
	for i := range c.attrs {
		if c.attrs[i].typ == typ {
			c.attrs[i].val = v
			return c
		}
	}
	t.Fatalf("no attribute %#04x to replace", typ)
	return c
}

// addrAttr encodes an address as MAPPED-ADDRESS (xor false, as
// ALTERNATE-SERVER is) or XOR-MAPPED-ADDRESS (RFC 8489 14.1, 14.2).
func addrAttr(a netip.AddrPort, xor bool, tid [12]byte) []byte {
	ip := a.Addr().Unmap().AsSlice()
	fam := byte(1)
	if len(ip) == 16 {
		fam = 2
	}
	port := a.Port()
	if xor {
		port ^= stunMagic >> 16
		pad := binary.BigEndian.AppendUint32(nil, stunMagic)
		pad = append(pad, tid[:]...)
		for i := range ip {
			ip[i] ^= pad[i]
		}
	}
	return append(binary.BigEndian.AppendUint16([]byte{0, fam}, port), ip...)
}

// decodeAddr reads a MAPPED-ADDRESS value (not XORed).
func decodeAddr(t testing.TB, v []byte) netip.AddrPort {
	t.Helper()
	require.True(t, len(v) == 8 && v[0] == 0 && v[1] == 1 || len(v) == 20 && v[0] == 0 && v[1] == 2, "address %x", v)
	a, _ := netip.AddrFromSlice(v[4:])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(v[2:4]))
}

// specKit is the example world of README sections 2 and 3: the signing
// key, the example token and its integrity key.
type specKit struct {
	ex    map[string][]byte
	priv  ed25519.PrivateKey
	token []byte
	key   []byte // K of the example token
}

func newSpecKit(t testing.TB) *specKit {
	t.Helper()
	ex := specExamples(t)
	seed := make([]byte, ed25519.SeedSize) // "the bytes 0 to 31"
	for i := range seed {
		seed[i] = byte(i)
	}
	k := &specKit{ex: ex, priv: ed25519.NewKeyFromSeed(seed), token: ex["token"]}
	require.Len(t, k.token, 108, "the token example")
	k.key = integrityKey(k.token)
	return k
}

// integrityKey is K of README section 3.
func integrityKey(token []byte) []byte {
	h := sha256.Sum256(append([]byte("callrelay join integrity v1\x00"), token...))
	return h[:20]
}

// signedToken is the example token for another participant, laid out and
// signed as README section 2 says, as the application's signalling
// service would.
func (k *specKit) signedToken(participant byte) []byte {
	tok := append([]byte(nil), k.token...)
	copy(tok[28:44], bytes.Repeat([]byte{participant}, 16))
	copy(tok[44:], ed25519.Sign(k.priv, append([]byte("callrelay join token v1\x00"), tok[:44]...)))
	return tok
}

// example returns the named STUN example, parsed.
func (k *specKit) example(t testing.TB, name string) stunMsg {
	t.Helper()
	b, ok := k.ex[name]
	require.True(t, ok, "README has no example %q", name)
	m, err := parseSTUN(b)
	require.NoError(t, err, "README example %q", name)
	return m
}

// startSpecForwarder runs a forwarder that trusts the example signing key,
// on a clock a day before the example token expires.
func (k *specKit) startSpecForwarder(t *testing.T, mod func(*forwarder.Config)) *forwarder.Forwarder {
	t.Helper()
	v, err := protocol.NewTokenVerifier(k.priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Verifier = v
	cfg.Readers = 1 // datagrams from several test sockets are handled in the order sent
	cfg.Logger = zaptest.NewLogger(t)
	start, base := time.Now(), time.Unix(2000000000-86400, 0)
	cfg.Now = func() time.Time { return base.Add(time.Since(start)) }
	if mod != nil {
		mod(&cfg)
	}
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// specDevice is a UDP socket that speaks only bytes.
type specDevice struct {
	t     *testing.T
	conn  *net.UDPConn
	relay netip.AddrPort
}

func newSpecDevice(t *testing.T, relay netip.AddrPort) *specDevice {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &specDevice{t: t, conn: c, relay: relay}
}

func (d *specDevice) addr() netip.AddrPort { return d.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (d *specDevice) send(b []byte) {
	d.t.Helper()
	_, err := d.conn.WriteToUDPAddrPort(b, d.relay)
	require.NoError(d.t, err)
}

// specWait bounds every wait for an answer: generous, since the machine is
// shared; only a missing answer takes this long.
const specWait = 10 * time.Second

// await returns the first datagram that match accepts, skipping others
// (the relay's REMB, say), within specWait.
func (d *specDevice) await(what string, match func([]byte) bool) []byte {
	d.t.Helper()
	deadline := time.Now().Add(specWait)
	buf := make([]byte, 2048)
	for {
		require.NoError(d.t, d.conn.SetReadDeadline(deadline))
		n, from, err := d.conn.ReadFromUDPAddrPort(buf)
		require.NoError(d.t, err, "waiting for %s", what)
		if from == d.relay && match(buf[:n]) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

// transact sends a STUN request and returns the answer with its
// transaction id. An answer is never larger than the request.
func (d *specDevice) transact(req []byte) []byte {
	d.t.Helper()
	tid := req[8:20]
	d.send(req)
	ans := d.await(fmt.Sprintf("the answer to transaction %x", tid), func(b []byte) bool {
		return len(b) >= 20 && b[0] < 4 && bytes.Equal(b[8:20], tid)
	})
	require.LessOrEqual(d.t, len(ans), len(req), "the relay answered with more bytes than it was sent")
	return ans
}

// requireSTUN compares an answer, byte for byte, with an example
// completed with what the relay chose (cookie, ticket) and saw (address),
// its integrity and fingerprint computed with key.
func requireSTUN(t *testing.T, want stunMsg, key, got []byte, what string) {
	t.Helper()
	_, err := parseSTUN(got)
	require.NoError(t, err, what)
	require.Equal(t, hex.EncodeToString(want.encode(key)), hex.EncodeToString(got), what)
}

// cookieOf returns the COOKIE of an answer (opaque, 1..32 bytes).
func cookieOf(t *testing.T, ans []byte) []byte {
	t.Helper()
	return opaqueOf(t, ans, attrCookie, 32)
}

// ticketOf returns the RESUME-TICKET of an answer (opaque, 1..256 bytes).
func ticketOf(t *testing.T, ans []byte) []byte {
	t.Helper()
	return opaqueOf(t, ans, attrTicket, 256)
}

func opaqueOf(t *testing.T, ans []byte, typ uint16, most int) []byte {
	t.Helper()
	m, err := parseSTUN(ans)
	require.NoError(t, err)
	v, ok := m.get(typ)
	require.True(t, ok && len(v) >= 1 && len(v) <= most, "attribute %#04x of 1..%d bytes in %x", typ, most, ans)
	return append([]byte(nil), v...)
}

// TestSpecExamplesAgree checks the README's examples against the rules
// they illustrate, so that a device built from them is built right: the
// token verifies with the example key, K is its integrity key, every STUN
// example is a well-formed message whose MESSAGE-INTEGRITY and FINGERPRINT
// are what the spec says, the requests carry the example token, and the
// RTCP examples' lengths add up.
func TestSpecExamplesAgree(t *testing.T) {
	k := newSpecKit(t)
	tok := k.token
	require.True(t, ed25519.Verify(k.priv.Public().(ed25519.PublicKey), append([]byte("callrelay join token v1\x00"), tok[:44]...), tok[44:]),
		"the example token is signed by the example key")
	require.Equal(t, []byte{1, 2, 0, 8}, tok[:4], "version 1, group, max size 8")
	require.Equal(t, uint64(2000000000), binary.BigEndian.Uint64(tok[4:12]))
	require.Equal(t, k.ex["integrity-key"], k.key, "K of the example token")
	user := hex.EncodeToString(tok[12:28]) + ":" + hex.EncodeToString(tok[28:44])

	for _, name := range []string{"join-request", "address-check", "join-request-with-cookie", "join-success",
		"malformed-request", "bad-request", "leave-request", "leave-success", "insufficient-capacity", "try-alternate"} {
		m := k.example(t, name)
		require.Equal(t, hex.EncodeToString(k.ex[name]), hex.EncodeToString(m.encode(k.key)), "%s: integrity, fingerprint and lengths as the spec computes them", name)
		if m.typ == 0x0001 {
			tk, _ := m.get(attrJoinToken)
			require.Equal(t, tok, tk, "%s carries the example token", name)
			u, _ := m.get(attrUsername)
			require.Equal(t, user, string(u), "%s: USERNAME", name)
		} else {
			_, ok := m.get(attrIntegrity)
			require.True(t, ok, "%s: an answer to a request with a token has MESSAGE-INTEGRITY", name)
		}
	}
	require.Equal(t, "192.0.2.10:3478", decodeAddr(t, must(k.example(t, "try-alternate").get(attrAlternate))).String())
	ok := k.example(t, "join-success")
	xa, _ := ok.get(attrXORMapped)
	require.Equal(t, addrAttr(netip.MustParseAddrPort("192.0.2.1:54321"), true, ok.tid), xa)

	for _, name := range []string{"rejoin", "rtcp-rr-empty", "pli", "fir", "relay-pli"} {
		b := k.ex[name]
		require.Equal(t, len(b), 4*(int(binary.BigEndian.Uint16(b[2:4]))+1), "%s: RTCP length", name)
	}
	require.Len(t, k.ex["rejoin"], 12)
	require.Less(t, len(k.ex["rtcp-rr-empty"]), 12)
}

func must(v []byte, ok bool) []byte {
	if !ok {
		panic("attribute missing")
	}
	return v
}

// TestSpecSessionConformance: a device's life on a forwarder, as README
// sections 3, 4, 5.9, 5.10 and 5.11 tell it: the address check, the join,
// a malformed request answered with integrity, a second member, audio
// without a conductor, a FIR and a PLI turned into the relay's PLI, a
// leave from another address that changes nothing, and a leave.
func TestSpecSessionConformance(t *testing.T) {
	k := newSpecKit(t)
	f := k.startSpecForwarder(t, nil)
	a := newSpecDevice(t, f.Addr())
	cookieA := k.joinAsExample(t, a)

	// Section 3: a malformed request that carries a token is answered
	// 400 with MESSAGE-INTEGRITY, exactly as the example.
	ans := a.transact(k.ex["malformed-request"])
	require.Equal(t, hex.EncodeToString(k.ex["bad-request"]), hex.EncodeToString(ans), "the 400")

	b := newSpecDevice(t, f.Addr())
	k.joinAsParticipant(t, b, 0x33)
	k.mediaAndKeyFrames(t, f, a, b)
	k.leaves(t, f, a, cookieA)
}

// joinAsExample joins d with the README's requests and checks the
// answers: the address check's 401 with a cookie, then, repeated with the
// cookie, the success. It returns the cookie.
func (k *specKit) joinAsExample(t *testing.T, d *specDevice) []byte {
	t.Helper()
	ans := d.transact(k.ex["join-request"])
	cookie := cookieOf(t, ans)
	requireSTUN(t, k.example(t, "address-check").with(t, attrCookie, cookie), k.key, ans, "the address check")
	ans = d.transact(k.example(t, "join-request-with-cookie").with(t, attrCookie, cookie).encode(k.key))
	success := k.example(t, "join-success")
	requireSTUN(t, success.with(t, attrXORMapped, addrAttr(d.addr(), true, success.tid)).with(t, attrTicket, ticketOf(t, ans)),
		k.key, ans, "the join's success")
	return cookie
}

// joinAsParticipant joins d as another participant of the example call,
// its token and requests built from the same layouts.
func (k *specKit) joinAsParticipant(t *testing.T, d *specDevice, participant byte) {
	t.Helper()
	tok := k.signedToken(participant)
	key := integrityKey(tok)
	user := []byte(hex.EncodeToString(tok[12:28]) + ":" + hex.EncodeToString(tok[28:44]))
	first := k.example(t, "join-request").with(t, attrUsername, user).with(t, attrJoinToken, tok)
	first.tid[11] = participant
	ans := d.transact(first.encode(key))
	cookie := cookieOf(t, ans)
	challenge := k.example(t, "address-check").with(t, attrCookie, cookie)
	challenge.tid = first.tid
	requireSTUN(t, challenge, key, ans, "the second participant's address check")
	join := k.example(t, "join-request-with-cookie").with(t, attrUsername, user).with(t, attrJoinToken, tok).with(t, attrCookie, cookie)
	join.tid[11] = participant + 1
	ans = d.transact(join.encode(key))
	success := k.example(t, "join-success").with(t, attrXORMapped, addrAttr(d.addr(), true, join.tid)).with(t, attrTicket, ticketOf(t, ans))
	success.tid = join.tid
	requireSTUN(t, success, key, ans, "the second participant's success")
}

// mediaAndKeyFrames: b's audio reaches a with no conductor (5.11, byte
// exact as section 4 says); a sends the video stream ca fe 00 01, and b's
// FIR (RFC 5104: media SSRC 0, the stream in the FCI) and then b's PLI each
// make the relay ask a for a key frame with its own PLI (5.9, 5.10).
func (k *specKit) mediaAndKeyFrames(t *testing.T, f *forwarder.Forwarder, a, b *specDevice) {
	t.Helper()
	audio := k.ex["rtp-audio"]
	b.send(audio)
	a.await("B's audio", func(p []byte) bool { return bytes.Equal(p, audio) })

	// The FIR is sent once: nothing else in this test asks for a key frame
	// of that stream, so the relay's PLI is the FIR's doing.
	a.send(k.ex["rtp-video-key-frame"])
	b.send(k.ex["fir"])
	relayPLI := k.ex["relay-pli"]
	a.await("the relay's PLI after a FIR", func(p []byte) bool { return bytes.Equal(p, relayPLI) })
	require.Equal(t, uint64(1), f.Stats().KeyRequests, "the FIR's one entry")

	// The relay sends at most one PLI per stream per 200 ms, so b repeats
	// its PLI until one gets through, as a device whose decoder still
	// waits would.
	deadline := time.Now().Add(specWait)
	for got := false; !got; {
		require.True(t, time.Now().Before(deadline), "no PLI from the relay after B's PLIs")
		b.send(k.ex["pli"])
		require.NoError(t, a.conn.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
		buf := make([]byte, 2048)
		for !got {
			n, _, err := a.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			got = bytes.Equal(buf[:n], relayPLI)
		}
	}
}

// leaves: section 3 step 5. A LEAVE from another socket of participant
// 2222…22 (its cookie proves that address) is answered with the success
// answer and changes nothing; a's own LEAVE gets the same answer and ends
// the session.
func (k *specKit) leaves(t *testing.T, f *forwarder.Forwarder, a *specDevice, cookieA []byte) {
	t.Helper()
	a2 := newSpecDevice(t, f.Addr())
	ans := a2.transact(k.ex["join-request"])
	cookieA2 := cookieOf(t, ans)
	requireSTUN(t, k.example(t, "address-check").with(t, attrCookie, cookieA2), k.key, ans, "A2's address check")
	leave := k.example(t, "leave-request")
	ans = a2.transact(leave.with(t, attrCookie, cookieA2).encode(k.key))
	leaveOK := k.example(t, "leave-success")
	requireSTUN(t, leaveOK.with(t, attrXORMapped, addrAttr(a2.addr(), true, leaveOK.tid)), k.key, ans, "the answer to a leave from another address")

	// a's session is still there: its keepalive needs no cookie, and is
	// answered as a leave is (no new ticket is due).
	keepalive := k.example(t, "join-request")
	ans = a.transact(k.ex["join-request"])
	stillOK := leaveOK.with(t, attrXORMapped, addrAttr(a.addr(), true, keepalive.tid))
	stillOK.tid = keepalive.tid
	requireSTUN(t, stillOK, k.key, ans, "A's keepalive after the other address's leave")

	// a leaves from its own address: the same answer, and the session is
	// gone (a request without a cookie meets the address check again).
	ans = a.transact(leave.with(t, attrCookie, cookieA).encode(k.key))
	requireSTUN(t, leaveOK.with(t, attrXORMapped, addrAttr(a.addr(), true, leaveOK.tid)), k.key, ans, "the answer to A's leave")
	ans = a.transact(k.ex["join-request"])
	requireSTUN(t, k.example(t, "address-check").with(t, attrCookie, cookieOf(t, ans)), k.key, ans, "the address check after the leave")
	require.Equal(t, 1, f.Stats().Sessions, "the other participant is left")
}

// TestSpecRejoinConformance: README 5.8. Media from an address without a
// session is answered with the 12-byte Rejoin, byte for byte; a datagram
// shorter than 12 bytes is not answered.
func TestSpecRejoinConformance(t *testing.T) {
	k := newSpecKit(t)
	f := k.startSpecForwarder(t, nil)
	x := newSpecDevice(t, f.Addr())
	x.send(k.ex["rtcp-rr-empty"]) // 8 bytes: no answer
	x.send(k.ex["rtp-audio"])
	got := x.await("a Rejoin", func([]byte) bool { return true })
	require.Equal(t, hex.EncodeToString(k.ex["rejoin"]), hex.EncodeToString(got))
	// Both datagrams were taken for media from an unknown address; the
	// first one, handled before the second, was not answered.
	testenv.CheckFor(t, specWait, 10*time.Millisecond, func() error {
		if n := f.Stats().Drops[forwarder.DropUnknownSource]; n < 2 {
			return fmt.Errorf("%d datagrams from unknown sources counted", n)
		}
		return nil
	})
	require.Equal(t, uint64(1), f.Stats().RejoinNudges, "the 8-byte RR was answered")
}

// TestSpecRefusalConformance: README section 3's 508 and 300, byte for
// byte, from draining forwarders without and with an alternate.
func TestSpecRefusalConformance(t *testing.T) {
	k := newSpecKit(t)
	alt := decodeAddr(t, must(k.example(t, "try-alternate").get(attrAlternate)))
	for _, tc := range []struct {
		name, answer string
		alternate    netip.AddrPort
	}{
		{"no alternate", "insufficient-capacity", netip.AddrPort{}},
		{"an alternate", "try-alternate", alt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := k.startSpecForwarder(t, func(c *forwarder.Config) { c.Alternate = tc.alternate })
			f.Drain()
			d := newSpecDevice(t, f.Addr())
			cookie := cookieOf(t, d.transact(k.ex["join-request"]))
			ans := d.transact(k.example(t, "join-request-with-cookie").with(t, attrCookie, cookie).encode(k.key))
			require.Equal(t, hex.EncodeToString(k.ex[tc.answer]), hex.EncodeToString(ans))
		})
	}
}
