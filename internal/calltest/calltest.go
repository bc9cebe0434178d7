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
	"github.com/callrelay/callrelay/internal/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Loopback is where test devices bind.
var Loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// Member is one device in a call.
type Member struct {
	S    *client.Session
	SSRC uint32
	seq  uint16

	mu     sync.Mutex
	heard  map[uint32]time.Time     // last packet from each SSRC
	maxGap map[uint32]time.Duration // longest silence from each SSRC since ResetGaps
}

// Join joins with token through fwds and starts recording what arrives.
func Join(t testing.TB, token []byte, ssrc uint32, fwds ...netip.AddrPort) *Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: fwds, Token: token, LocalAddr: Loopback,
		FailoverAfter: 300 * time.Millisecond, JoinTimeout: 3 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return Watch(t, s, ssrc)
}

// Watch makes a Member of a Session joined elsewhere.
func Watch(t testing.TB, s *client.Session, ssrc uint32) *Member {
	m := &Member{S: s, SSRC: ssrc, heard: map[uint32]time.Time{}, maxGap: map[uint32]time.Duration{}}
	go m.record()
	return m
}

func (m *Member) record() {
	for p := range m.S.Media() {
		if p.Kind == protocol.KindRTP && len(p.Data) >= 12 {
			ssrc := binary.BigEndian.Uint32(p.Data[8:12])
			m.mu.Lock()
			if last, ok := m.heard[ssrc]; ok {
				m.maxGap[ssrc] = max(m.maxGap[ssrc], p.Received.Sub(last))
			}
			m.heard[ssrc] = p.Received
			m.mu.Unlock()
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

// ResetGaps starts measuring silences afresh.
func (m *Member) ResetGaps() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.maxGap)
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
				for _, m := range ms {
					m.Send()
				}
			}
		}
	}()
	t.Cleanup(func() { close(ended); wg.Wait() })
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
