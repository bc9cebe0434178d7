package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// exampleTicket is the ticket of protocol/README.md 2.1: call 1111…,
// participant 2222…, group of at most 8, issued at testNow for 5 minutes,
// bound to a token of 108 zero bytes.
func exampleTicket() Ticket {
	return Ticket{
		CallID: ID(bytes.Repeat([]byte{0x11}, 16)), ParticipantID: ID(bytes.Repeat([]byte{0x22}, 16)),
		Class: ClassGroup, MaxSize: 8, IssuedAt: testNow, ValidUntil: testNow.Add(5 * time.Minute),
		Binding: BindToken(make([]byte, TokenSize)),
	}
}

const exampleTicketHex = "01010200" + "00080000" + "a35a0d67" +
	"000001a3185c5000" + "000001a31860e3e0" +
	"11111111111111111111111111111111" + "22222222222222222222222222222222" +
	"da4992ce45038c76e5dfd35f1fe3a085" + "3755a427e3875213483cd18c52d5c22a"

// TestTicketVectors pins the subkey, key id, binding and tag of the wire
// spec's example, byte for byte.
func TestTicketVectors(t *testing.T) {
	k := testClusterKey(t).TicketKey()
	require.Equal(t, "f8b7ddda12c1aaf45a965d5ea6d3cbd725b679f3462e4309a69fa1068334a60a", hex.EncodeToString(k.key[:]), "ticket subkey")
	id := k.ID()
	require.Equal(t, "a35a0d67", hex.EncodeToString(id[:]), "key id")
	bind := BindToken(make([]byte, TokenSize))
	require.Equal(t, "da4992ce45038c76e5dfd35f1fe3a085", hex.EncodeToString(bind.Digest[:]))
	b, err := k.Seal(exampleTicket())
	require.NoError(t, err)
	require.Len(t, b, TicketSize)
	require.Equal(t, exampleTicketHex, hex.EncodeToString(b))
	got, err := k.Open(b, testNow.Add(time.Minute))
	require.NoError(t, err)
	require.Equal(t, exampleTicket().ValidUntil.UnixMilli(), got.ValidUntil.UnixMilli())
	require.Equal(t, exampleTicket().Binding, got.Binding)
}

// TestTicketOpen: every way a ticket can be refused, each with its reason.
func TestTicketOpen(t *testing.T) {
	k := testClusterKey(t).TicketKey()
	other, err := NewTicketKey()
	require.NoError(t, err)
	good, err := k.Seal(exampleTicket())
	require.NoError(t, err)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		return b
	}
	foreign, err := other.Seal(exampleTicket())
	require.NoError(t, err)
	valid := exampleTicket().ValidUntil
	tests := []struct {
		name   string
		in     []byte
		now    time.Time
		err    error
		reason string
	}{
		{"valid", good, testNow, nil, ""},
		{"valid a millisecond before it ends", good, valid.Add(-time.Millisecond), nil, ""},
		{"expired at valid-until", good, valid, ErrTicketExpired, "expired"},
		{"expired long ago", good, valid.Add(time.Hour), ErrTicketExpired, "expired"},
		{"sealed by another key", foreign, testNow, ErrTicketForeign, "foreign"},
		{"key id altered", flip(9), testNow, ErrTicketForeign, "foreign"},
		{"tag altered", flip(TicketSize - 1), testNow, ErrTicketForged, "forged"},
		{"valid-until altered", flip(27), testNow, ErrTicketForged, "forged"},
		{"participant altered", flip(50), testNow, ErrTicketForged, "forged"},
		{"binding altered", flip(70), testNow, ErrTicketForged, "forged"},
		{"empty", nil, testNow, ErrTicketMalformed, "malformed"},
		{"truncated", good[:TicketSize-1], testNow, ErrTicketMalformed, "malformed"},
		{"trailing byte", append(bytes.Clone(good), 0), testNow, ErrTicketMalformed, "malformed"},
		{"version 2", flip(0)[:TicketSize], testNow, ErrTicketMalformed, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := k.Open(tc.in, tc.now)
			if tc.err == nil {
				require.NoError(t, err)
				require.Equal(t, exampleTicket().CallID, got.CallID)
				return
			}
			require.ErrorIs(t, err, tc.err)
			require.Equal(t, tc.reason, TicketRefusal(err))
			require.Equal(t, CodeUnauthorized, ErrorCodeFor(err))
			require.Zero(t, got)
		})
	}
}

// TestTicketFields: Seal refuses what a ticket may not say, and a sealed
// ticket with a bad field (which only a key holder could make) is malformed.
func TestTicketFields(t *testing.T) {
	k := testClusterKey(t).TicketKey()
	tests := []struct {
		name string
		mod  func(*Ticket)
	}{
		{"unknown binding kind", func(tk *Ticket) { tk.Binding.Kind = 3 }},
		{"no class", func(tk *Ticket) { tk.Class = 0 }},
		{"class 3", func(tk *Ticket) { tk.Class = 3 }},
		{"max size 1", func(tk *Ticket) { tk.MaxSize = 1 }},
		{"no call", func(tk *Ticket) { tk.CallID = ID{} }},
		{"no participant", func(tk *Ticket) { tk.ParticipantID = ID{} }},
		{"never issued", func(tk *Ticket) { tk.IssuedAt = time.Time{} }},
		{"valid before issued", func(tk *Ticket) { tk.ValidUntil = tk.IssuedAt.Add(-time.Millisecond) }},
		{"valid too long", func(tk *Ticket) { tk.ValidUntil = tk.IssuedAt.Add(MaxTicketLifetime + time.Millisecond) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tk := exampleTicket()
			tc.mod(&tk)
			_, err := k.Seal(tk)
			require.ErrorIs(t, err, ErrTicketMalformed)
			body := tk.body(k.ID())
			tag := k.tag(body[:])
			_, err = k.Open(append(body[:], tag[:ticketTagSize]...), testNow)
			require.ErrorIs(t, err, ErrTicketMalformed)
		})
	}
	b, err := k.Seal(exampleTicket())
	require.NoError(t, err)
	b[3] = 1 // reserved
	_, _, err = ParseTicket(b)
	require.ErrorIs(t, err, ErrTicketMalformed)
}

// TestVerifyResume: an expired token comes back only with an authentic,
// unexpired ticket for its own call, participant and bytes.
func TestVerifyResume(t *testing.T) {
	pub, priv := testKeys(t)
	_, otherPriv, err := GenerateSigningKey()
	require.NoError(t, err)
	v, err := NewTokenVerifier(pub)
	require.NoError(t, err)
	k := testClusterKey(t).TicketKey()
	expired := func(tk *Token) { tk.Expiry = testNow.Add(-time.Minute) }
	tok := testToken(t, priv, expired)
	decoded, err := DecodeToken(tok)
	require.NoError(t, err)
	seal := func(tk Ticket) []byte {
		b, err := k.Seal(tk)
		require.NoError(t, err)
		return b
	}
	issued := TicketFor(decoded, tok, testNow.Add(-time.Minute), 5*time.Minute)
	good := seal(issued)
	otherParticipant := issued
	otherParticipant.ParticipantID = ID{0x99}
	// The same participant's other token (another expiry): a ticket is
	// bound to the bytes it was issued for.
	sibling := testToken(t, priv, func(tk *Token) { tk.Expiry = testNow.Add(-2 * time.Minute) })
	request := func(token, ticket []byte) JoinRequest {
		m, err := BuildJoinRequest(token, JoinOptions{Ticket: ticket})
		require.NoError(t, err)
		r, err := ParseJoinRequest(decodeSTUN(t, m.Raw))
		require.NoError(t, err)
		return r
	}
	tests := []struct {
		name string
		req  JoinRequest
		err  error
		code int
	}{
		{"expired token, good ticket", request(tok, good), nil, 0},
		{"no ticket", request(tok, nil), ErrTicketMalformed, 401},
		{"ticket for another participant", request(tok, seal(otherParticipant)), ErrTicketMismatch, 401},
		{"ticket for the participant's other token", request(sibling, good), ErrTicketMismatch, 401},
		{"forged token", request(testToken(t, otherPriv, expired), good), ErrTokenSignature, 401},
		{"expired ticket", request(tok, seal(TicketFor(decoded, tok, testNow.Add(-10*time.Minute), 5*time.Minute))), ErrTicketExpired, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, tk, err := VerifyResume(tc.req, v, k, testNow)
			if tc.err == nil {
				require.NoError(t, err)
				require.Equal(t, decoded.ParticipantID, got.ParticipantID)
				require.Equal(t, decoded.ParticipantID, tk.ParticipantID)
				require.Equal(t, ClassGroup, tk.Class)
				return
			}
			require.ErrorIs(t, err, tc.err)
			require.Equal(t, tc.code, int(ErrorCodeFor(err)))
		})
	}
	// The USERNAME must name the token's participant, as for any join.
	r := request(tok, good)
	r.ParticipantID = ID{0x99}
	_, _, err = VerifyResume(r, v, k, testNow)
	require.ErrorIs(t, err, ErrWrongCall)
	require.Equal(t, CodeForbidden, ErrorCodeFor(err))
}

// TestJoinTicketAttribute: the ticket travels in requests and success
// answers, both ways unchanged, and a request's ticket stays bounded.
func TestJoinTicketAttribute(t *testing.T) {
	_, priv := testKeys(t)
	tok := testToken(t, priv, nil)
	ticket := bytes.Repeat([]byte{0xab}, TicketSize)
	m, err := BuildJoinRequest(tok, JoinOptions{Ticket: ticket})
	require.NoError(t, err)
	r, err := ParseJoinRequest(decodeSTUN(t, m.Raw))
	require.NoError(t, err)
	require.Equal(t, ticket, r.Ticket)
	_, err = BuildJoinRequest(tok, JoinOptions{Ticket: make([]byte, MaxTicketSize+1)})
	require.ErrorIs(t, err, ErrJoinMalformed)

	raw, err := BuildJoinAccept(r, JoinSuccess{Mapped: netip.MustParseAddrPort("127.0.0.1:40000"), Params: SessionParams{time.Second, 10 * time.Second}, Ticket: ticket}, IntegrityKey(tok))
	require.NoError(t, err)
	resp, err := ParseJoinResponse(raw, r.TransactionID, IntegrityKey(tok))
	require.NoError(t, err)
	require.True(t, resp.OK)
	require.Equal(t, ticket, resp.Ticket)
	raw, err = BuildJoinSuccess(r, netip.MustParseAddrPort("127.0.0.1:40000"), SessionParams{time.Second, 10 * time.Second}, IntegrityKey(tok))
	require.NoError(t, err)
	resp, err = ParseJoinResponse(raw, r.TransactionID, IntegrityKey(tok))
	require.NoError(t, err)
	require.Nil(t, resp.Ticket)
}

// ticketFuzzSeeds are FuzzTicket's committed corpus (TestTicketFuzzSeeds).
func ticketFuzzSeeds(t testing.TB) map[string][]byte {
	k := testClusterKey(t).TicketKey()
	good, err := k.Seal(exampleTicket())
	require.NoError(t, err)
	expired := exampleTicket()
	expired.IssuedAt, expired.ValidUntil = testNow.Add(-time.Hour), testNow.Add(-time.Minute)
	old, err := k.Seal(expired)
	require.NoError(t, err)
	forged := bytes.Clone(good)
	forged[TicketSize-1] ^= 0xff
	body := exampleTicket()
	body.Class = 3
	bad := body.body(k.ID())
	badTag := k.tag(bad[:])
	devBound := exampleTicket()
	devBound.Binding = BindDevice(testDeviceKey().Public().(ed25519.PublicKey))
	dev, err := k.Seal(devBound)
	require.NoError(t, err)
	return map[string][]byte{
		"device-binding":   dev,
		"good":             good,
		"expired":          old,
		"forged":           forged,
		"truncated":        good[:40],
		"bad-class-sealed": append(bad[:], badTag[:ticketTagSize]...),
		"empty":            {},
	}
}

// TestTicketFuzzSeeds checks FuzzTicket's committed seeds. To rewrite them:
//
//	CALLRELAY_WRITE_FUZZ_SEEDS=1 go test -run TestTicketFuzzSeeds ./protocol/
func TestTicketFuzzSeeds(t *testing.T) {
	checkFuzzSeeds(t, map[string]map[string][]byte{"FuzzTicket": ticketFuzzSeeds(t)}, true)
}

// FuzzTicket: arbitrary bytes never panic Open or ParseTicket; whatever
// parses encodes back to the same bytes, and whatever opens was sealed by
// the key (Seal gives the input back).
func FuzzTicket(f *testing.F) {
	for _, b := range ticketFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f).TicketKey()
	f.Fuzz(func(t *testing.T, b []byte) {
		tk, err := k.Open(b, testNow)
		if err == nil {
			again, err := k.Seal(tk)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("opened ticket does not seal back: %v", err)
			}
		} else if TicketRefusal(err) == "" {
			t.Fatalf("refusal without a reason: %v", err)
		}
		p, id, err := ParseTicket(b)
		if err != nil {
			return
		}
		if body := p.body(id); !bytes.Equal(body[:], b[:ticketBodySize]) {
			t.Fatalf("parsed ticket does not encode back")
		}
	})
}

// TestTicketReadmeExample: the wire spec's ticket example (README 2.1) is
// what Seal makes of exampleTicket, byte for byte.
func TestTicketReadmeExample(t *testing.T) {
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, block, ok := strings.Cut(string(b), "```hex example:ticket\n")
	require.True(t, ok, "README has no ticket example")
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)
	var got []byte
	for _, line := range strings.Split(block, "\n") {
		data, _, _ := strings.Cut(line, "  ")
		for _, h := range strings.Fields(data) {
			v, err := hex.DecodeString(h)
			require.NoError(t, err, "line %q", line)
			got = append(got, v...)
		}
	}
	require.Equal(t, exampleTicketHex, hex.EncodeToString(got))
}
