package client

import (
	"sync"

	"github.com/callrelay/callrelay/protocol"
)

// SpeakerTracker follows the relay's DominantSpeaker messages (CRLY APP
// subtype 3, protocol/README.md 5.4), which reach the application on the
// Media channel as RTCP. Feed it every RTCP datagram; it keeps the newest
// decision by epoch and sequence, so a late or repeated packet never flips
// a UI back, and a conductor that took over (a higher epoch) wins. Safe for
// concurrent use.
type SpeakerTracker struct {
	mu      sync.Mutex
	cur     protocol.DominantSpeaker
	have    bool
	changes int
}

// Observe reads one RTCP datagram. It returns the dominant speaker and
// true when the datagram carried a newer decision naming someone other than
// the current one; anything else (other RTCP, stale or repeated decisions,
// garbage) returns false.
func (t *SpeakerTracker) Observe(rtcp []byte) (protocol.ID, bool) {
	m, _, err := protocol.ParseRelayApp(rtcp)
	if err != nil {
		return protocol.ID{}, false
	}
	d, ok := m.(*protocol.DominantSpeaker)
	if !ok {
		return protocol.ID{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.have && !d.Newer(t.cur) {
		return protocol.ID{}, false
	}
	changed := !t.have || d.Participant != t.cur.Participant
	t.cur, t.have = *d, true
	if !changed {
		return protocol.ID{}, false
	}
	t.changes++
	return protocol.ID(d.Participant), true
}

// Current returns the dominant speaker (false before the first message).
func (t *SpeakerTracker) Current() (protocol.ID, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return protocol.ID(t.cur.Participant), t.have
}

// Changes counts how often the dominant speaker changed.
func (t *SpeakerTracker) Changes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changes
}
