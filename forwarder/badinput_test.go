package forwarder

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestBadInputDoesNotDisturbCalls runs a one-to-one call while an attacker
// sends garbage, truncated and oversized datagrams, forged and foreign
// tokens, media from an address that never joined, and a STUN flood. Every
// call packet must still arrive, and each kind of bad input must be counted
// under its reason.
func TestBadInputDoesNotDisturbCalls(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.JoinRate, c.JoinBurst = 20, 20 }) // per IP: 10 per reader
	forger := startRelay(t, nil)
	call := protocol.NewID()
	a := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	b := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	a.join()
	b.join()

	evil := newRawDevice(t, r.f.Addr(), forger.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	// Forged token: 401, carrying the forged token's integrity.
	require.Equal(t, protocol.CodeUnauthorized, evil.bind(false).Code)
	// Valid signature, but the USERNAME asks for another call: 403 is
	// covered in protocol tests; here a token for another call cannot reach a
	// full one-to-one call:
	evil.token = r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2)
	require.Equal(t, protocol.CodeForbidden, evil.bind(false).Code)

	garbage := make([]byte, 200)
	_, _ = rand.Read(garbage)
	garbage[0] = 0x42 // not STUN, not RTP: RFC 7983 says drop
	evil.send(garbage)
	evil.send(append([]byte{0x8f}, make([]byte, 15)...))  // RTP claiming 15 CSRCs it lacks
	evil.send([]byte{0x80, 0xc8, 0x00, 0x10, 1, 2, 3, 4}) // RTCP whose length overruns
	evil.send(make([]byte, 1800))                         // oversized (first byte 0: "STUN" but too big)
	evil.send(rtpPacket(66, 1, []byte("intruder")))       // media from a non-member
	for i := 0; i < 200; i++ {                            // a STUN flood from one source
		m, _ := protocol.BuildJoinRequest(evil.token, protocol.JoinOptions{})
		evil.send(m.Raw)
	}

	// The call goes on, byte-exact and complete.
	for seq := 0; seq < 50; seq++ {
		a.send(rtpPacket(1, uint16(seq), []byte(fmt.Sprintf("a%d", seq))))
	}
	for seq := 0; seq < 50; seq++ {
		p, ok := b.recv(2 * time.Second)
		require.True(t, ok, "call packet %d lost", seq)
		require.Equal(t, rtpPacket(1, uint16(seq), []byte(fmt.Sprintf("a%d", seq))), p)
	}
	_, extra := b.recv(100 * time.Millisecond)
	require.False(t, extra, "the intruder's media reached a member")
	require.True(t, a.bind(false).OK, "a member's keepalive refused during the flood")

	st := r.f.Stats()
	t.Logf("drops: %v", st.Drops)
	require.EqualValues(t, 1, st.Drops[DropNotMedia])
	require.EqualValues(t, 2, st.Drops[DropMalformed])
	require.EqualValues(t, 1, st.Drops[DropOversized])
	require.EqualValues(t, 1, st.Drops[DropUnknownSource])
	require.Greater(t, st.Drops[DropSTUNRateLimited], uint64(150), "flood not rate limited")
	require.Equal(t, 2, st.Sessions)
}
