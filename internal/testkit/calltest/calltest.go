// Package calltest has devices for tests of whole calls: each joins through
// the client library's failover Session, sends small RTP packets with its own
// SSRC and records whom it hears and the longest silence from each. It never
// looks inside a payload.
package calltest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Loopback is where test devices bind.
var Loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// Member is one device in a call.
type Member struct {
	S    *client.Session
	SSRC uint32
	seq  uint16

	// ID is the member's participant id (set by callers that know it).
	ID protocol.ID
	// Speaker follows the relay's DominantSpeaker messages.
	Speaker client.SpeakerTracker

	mu       sync.Mutex
	heard    map[uint32]time.Time     // last packet from each SSRC
	maxGap   map[uint32]time.Duration // longest silence from each SSRC since ResetGaps
	gapEnd   map[uint32]time.Time     // when that silence ended
	counts   map[uint32]int           // packets from each SSRC
	speech   map[uint32]int           // speech packets (AudioRTP's, speaking) from each SSRC
	lastSaid map[uint32]time.Time     // the last of them
	spoken   int                      // speech packets sent by SendAudio
	speakers []SpeakerChange
}

// SpeakerChange is one change of dominant speaker as a device saw it.
type SpeakerChange struct {
	At      time.Time
	Speaker protocol.ID
}

// Join joins with token through fwds and starts recording what arrives.
func Join(t testing.TB, token []byte, ssrc uint32, fwds ...netip.AddrPort) *Member {
	t.Helper()
	return JoinConfig(t, client.Config{Forwarders: fwds, Token: token}, ssrc)
}

// JoinConfig joins with cfg, whose zero LocalAddr, FailoverAfter and
// JoinTimeout become Join's (loopback, 300 ms, 3 s), and starts recording
// what arrives.
func JoinConfig(t testing.TB, cfg client.Config, ssrc uint32) *Member {
	t.Helper()
	if !cfg.LocalAddr.IsValid() {
		cfg.LocalAddr = Loopback
	}
	if cfg.FailoverAfter == 0 {
		cfg.FailoverAfter = 300 * time.Millisecond
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return Watch(t, s, ssrc)
}

// Watch makes a Member of a Session joined elsewhere.
func Watch(t testing.TB, s *client.Session, ssrc uint32) *Member {
	m := &Member{S: s, SSRC: ssrc, heard: map[uint32]time.Time{}, maxGap: map[uint32]time.Duration{}, gapEnd: map[uint32]time.Time{}, counts: map[uint32]int{},
		speech: map[uint32]int{}, lastSaid: map[uint32]time.Time{}}
	go m.record()
	return m
}

func (m *Member) record() {
	for p := range m.S.Media() {
		if p.Kind == protocol.KindRTP && len(p.Data) >= 12 {
			ssrc := binary.BigEndian.Uint32(p.Data[8:12])
			m.mu.Lock()
			if last, ok := m.heard[ssrc]; ok {
				if g := p.Received.Sub(last); g > m.maxGap[ssrc] {
					m.maxGap[ssrc], m.gapEnd[ssrc] = g, p.Received
				}
			}
			m.heard[ssrc] = p.Received
			m.counts[ssrc]++
			if IsSpeech(p.Data) {
				m.speech[ssrc]++
				m.lastSaid[ssrc] = p.Received
			}
			m.mu.Unlock()
		}
		if p.Kind == protocol.KindRTCP {
			if id, changed := m.Speaker.Observe(p.Data); changed {
				m.mu.Lock()
				m.speakers = append(m.speakers, SpeakerChange{p.Received, id})
				m.mu.Unlock()
			}
		}
		p.Release()
	}
}

// Send sends one RTP packet.
func (m *Member) Send() {
	m.seq++
	_ = m.S.WriteRTP(RTP(m.SSRC, m.seq))
}

// LastFrom is when the last packet from ssrc arrived (zero: never).
func (m *Member) LastFrom(ssrc uint32) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heard[ssrc]
}

// MaxGap is the longest silence from ssrc since ResetGaps.
func (m *Member) MaxGap(ssrc uint32) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxGap[ssrc]
}

// MaxGapEnd is when the silence MaxGap measures ended (zero if none).
func (m *Member) MaxGapEnd(ssrc uint32) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gapEnd[ssrc]
}

// Count is how many RTP packets from ssrc arrived.
func (m *Member) Count(ssrc uint32) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[ssrc]
}

// Speakers returns the dominant speaker changes seen so far.
func (m *Member) Speakers() []SpeakerChange {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]SpeakerChange(nil), m.speakers...)
}

// SendAudio sends one 20 ms audio packet with the RFC 6464 level: speech
// (-30 dBov, voice flag, 90 payload bytes, what Opus sends for speech) or
// silence (127, no flag, 8 bytes, a comfort-noise frame).
func (m *Member) SendAudio(speaking bool) {
	m.seq++
	if speaking {
		m.mu.Lock()
		m.spoken++
		m.mu.Unlock()
	}
	_ = m.S.WriteRTP(AudioRTP(m.SSRC, m.seq, speaking))
}

// Spoken is how many speech packets SendAudio sent.
func (m *Member) Spoken() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.spoken
}

// SpeechFrom is how many speech packets (AudioRTP's, speaking) from ssrc
// arrived, and when the last one did.
func (m *Member) SpeechFrom(ssrc uint32) (int, time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.speech[ssrc], m.lastSaid[ssrc]
}

// IsSpeech says whether b is an AudioRTP packet of speech: its audio level
// element (extension id 1, the first of a one-byte header extension)
// carries the voice flag.
func IsSpeech(b []byte) bool {
	return len(b) >= 20 && b[0]&0x10 != 0 && b[12] == 0xbe && b[13] == 0xde && b[16] == 0x10 && b[17]&0x80 != 0
}

// AudioRTP is an audio packet from ssrc with the audio level element
// (extension id 1) of speech or silence.
func AudioRTP(ssrc uint32, seq uint16, speaking bool) []byte {
	level, payload := byte(127), 8
	if speaking {
		level, payload = 0x80|30, 90
	}
	b := make([]byte, 16, 20+payload)
	b[0], b[1] = 0x90, 111
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], uint32(seq)*960)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	b[12], b[13], b[15] = 0xbe, 0xde, 1
	b = append(b, 0x10, level, 0, 0)
	return append(b, make([]byte, payload)...)
}

// Speak makes every member send audio every 20 ms, speaking when
// script(i, elapsed) says so, until stop is closed (and the test ends).
// It returns the start time of the script.
func Speak(t testing.TB, ms []*Member, script func(i int, at time.Duration) bool, stop <-chan struct{}) time.Time {
	start := time.Now()
	every20ms(t, stop, func() {
		at := time.Since(start)
		for i, m := range ms {
			m.SendAudio(script(i, at))
		}
	})
	return start
}

// ResetGaps starts measuring silences afresh.
func (m *Member) ResetGaps() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.maxGap)
	clear(m.gapEnd)
}

// RTP is a small RTP packet from ssrc.
func RTP(ssrc uint32, seq uint16) []byte {
	b := make([]byte, 12+40)
	b[0], b[1] = 0x80, 111
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return b
}

// Talk makes every member send a packet every 20 ms until stop is closed
// (and the test ends).
func Talk(t testing.TB, ms []*Member, stop <-chan struct{}) {
	every20ms(t, stop, func() {
		for _, m := range ms {
			m.Send()
		}
	})
}

// every20ms runs tick every 20 ms on its own goroutine until stop is
// closed or the test ends.
func every20ms(t testing.TB, stop <-chan struct{}, tick func()) {
	var wg sync.WaitGroup
	ended := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ended:
				return
			case <-tk.C:
				tick()
			}
		}
	}()
	t.Cleanup(func() { close(ended); wg.Wait() })
}

// WaitForwarder waits until m's session is on the forwarder at addr. After
// a forwarder stops, wait for this before AllHearAll: packets relayed just
// before the stop can still arrive after it.
func WaitForwarder(t testing.TB, m *Member, addr netip.AddrPort, timeout time.Duration) {
	t.Helper()
	testenv.CheckFor(t, timeout, 10*time.Millisecond, func() error {
		if got := m.S.Forwarder(); got != addr {
			return fmt.Errorf("member on %s, want %s", got, addr)
		}
		return nil
	})
}

// AllHearAll waits until every member has heard every other after since.
func AllHearAll(t testing.TB, ms []*Member, since time.Time, timeout time.Duration) {
	t.Helper()
	testenv.CheckFor(t, timeout, 10*time.Millisecond, func() error {
		for i, a := range ms {
			for j, b := range ms {
				if i != j && !a.LastFrom(b.SSRC).After(since) {
					return fmt.Errorf("member %d (on %s) has not heard member %d (on %s)", i, a.S.Forwarder(), j, b.S.Forwarder())
				}
			}
		}
		return nil
	})
}
