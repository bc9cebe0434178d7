package client

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// TestDialPrefersNearer: a far forwarder (each answer 80 ms late: its
// address check, then its success) accepts first, a near one 250 ms after
// its address check:
// the far success is held and the near one wins within PreferNearerWithin
// (the far one is left); without the preference, or when the near one
// never accepts, the far one wins, the latter once the hold is up; a near
// candidate that never answered at all (dead) holds nothing up.
func TestDialPrefersNearer(t *testing.T) {
	const farRTT, nearLate, within = 80 * time.Millisecond, 250 * time.Millisecond, 600 * time.Millisecond
	for _, tc := range []struct {
		name      string
		prefer    time.Duration
		near      func(int, protocol.JoinRequest) []reply
		nearDead  bool
		wantNear  bool
		minTook   time.Duration // at least (the hold ran out)
		maxTook   time.Duration // at most (no hold)
		leaveNear bool
	}{
		{name: "nearer accepts within the hold", prefer: within, near: answer(reply{delay: nearLate}), wantNear: true},
		{name: "preference off", prefer: -1, near: answer(reply{delay: nearLate}), leaveNear: true},
		{name: "nearer never accepts", prefer: within, near: silent, minTook: within},
		{name: "nearer dead", prefer: within, nearDead: true, maxTook: within / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			near, far := e.responder(fastParams), e.responder(fastParams)
			far.set(func(r *responder) { r.challengeDelay = farRTT })
			far.script(answer(reply{delay: farRTT}))
			if tc.nearDead {
				near.set(func(r *responder) { r.dead = true })
			} else {
				near.script(tc.near)
			}
			cfg := e.config(near, far)
			cfg.PreferNearerWithin, cfg.LoserGrace = tc.prefer, time.Second
			cfg.RetransmitInitial = 300 * time.Millisecond // answers to first sends only give RTTs (Karn)
			start := time.Now()
			c := e.dial(cfg)
			took := time.Since(start)
			winner, loser := far, near
			if tc.wantNear {
				winner, loser = near, far
			}
			require.Equal(t, winner.addr, c.Forwarder(), "took %v", took)
			require.Empty(t, winner.leaves(), "the winner keeps its session")
			if tc.wantNear || tc.leaveNear {
				eventually(t, func() bool { return len(loser.leaves()) == 1 }, "the loser that accepted gets a leave")
			}
			if tc.minTook > 0 {
				require.GreaterOrEqual(t, took, tc.minTook, "the far success was held for the near one")
			}
			if tc.maxTook > 0 {
				require.Less(t, took, tc.maxTook, "nothing held for a candidate that never answered")
			}
			if tc.nearDead {
				require.Empty(t, near.from(netip.AddrPort{}), "the dead one heard nothing")
			}
		})
	}
}
