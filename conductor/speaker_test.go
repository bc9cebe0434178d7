package conductor

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// speakerClock drives a detector tick by tick: every member reports at the
// same phase and the conductor decides right after.
type speakerClock struct {
	t   *testing.T
	d   *SpeakerDetector
	now time.Time
}

func newSpeakerClock(t *testing.T, cfg SpeakerConfig) *speakerClock {
	return &speakerClock{t: t, d: NewSpeakerDetector(cfg), now: time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)}
}

func pid(b byte) protocol.ID { return protocol.ID{0xaa, 15: b} }

// speech is a plausible 100 ms tick of voiced audio at level (-dBov).
func speech(p protocol.ID, level uint8) Observation {
	return Observation{Participant: p, Tick: 100 * time.Millisecond, Packets: 5, VoicePackets: 5,
		PayloadBytes: 450, MeanLevel: level, MaxLevel: level - 2}
}

// dtx is a tick of DTX silence.
func dtx(p protocol.ID) Observation {
	return Observation{Participant: p, Tick: 100 * time.Millisecond, Packets: 1, PayloadBytes: 3, MeanLevel: 127, MaxLevel: 127}
}

// tick advances 100 ms, feeds obs and decides; it returns what Decide did.
func (c *speakerClock) tick(obs ...Observation) (protocol.ID, bool) {
	c.now = c.now.Add(100 * time.Millisecond)
	for _, o := range obs {
		c.d.Observe(c.now, o)
	}
	return c.d.Decide(c.now)
}

// run ticks n times with the same observations and returns the tick index
// (1-based) of the first change, or 0.
func (c *speakerClock) run(n int, obs ...Observation) int {
	first := 0
	for i := 1; i <= n; i++ {
		if _, ch := c.tick(obs...); ch && first == 0 {
			first = i
		}
	}
	return first
}

func TestSpeakerElectionAndTurn(t *testing.T) {
	a, b := pid(1), pid(2)
	c := newSpeakerClock(t, DefaultSpeakerConfig())
	require.Zero(t, c.run(6, speech(a, 30)), "6 ticks (600 ms) must not elect")
	dom, ch := c.tick(speech(a, 30))
	require.True(t, ch, "the 7th speech tick elects")
	require.Equal(t, a, dom)
	require.Zero(t, c.run(30, speech(a, 30)))

	// A stops (its forwarder reports DTX), B starts at once: B takes the
	// floor with its 7th tick.
	require.Equal(t, 7, c.run(10, speech(b, 30), dtx(a)))
	require.Equal(t, b, c.d.Dominant())
	c.run(20, speech(b, 30))
	// B stops and its forwarder reports nothing: B's ticks count as
	// silent only once overdue by Grace, one tick later.
	require.Equal(t, 8, c.run(10, speech(a, 30)))
	require.Equal(t, a, c.d.Dominant())
}

func TestSpeakerDwell(t *testing.T) {
	a, b := pid(1), pid(2)
	for _, dwell := range []time.Duration{time.Second, 3 * time.Second} {
		cfg := DefaultSpeakerConfig()
		cfg.MinDwell = dwell
		c := newSpeakerClock(t, cfg)
		require.Equal(t, 7, c.run(7, speech(a, 30)))
		elected := c.now
		// A falls silent right after being elected and B talks: B has
		// enough speech after 0.7 s but must wait out the dwell.
		var at time.Time
		for range 50 {
			if _, ch := c.tick(speech(b, 30)); ch {
				at = c.now
				break
			}
		}
		require.Equal(t, b, c.d.Dominant())
		require.Equal(t, dwell, at.Sub(elected), "dwell %v", dwell)
	}
}

func TestSpeakerInterjectionAndCough(t *testing.T) {
	a, b := pid(1), pid(2)
	c := newSpeakerClock(t, DefaultSpeakerConfig())
	c.run(20, speech(a, 35))
	// A 600 ms interjection, much louder, over A's speech; then a cough.
	require.Zero(t, c.run(6, speech(a, 35), speech(b, 10)))
	require.Zero(t, c.run(10, speech(a, 35)))
	require.Zero(t, c.run(2, speech(a, 35), speech(b, 3)))
	// The same in silence: A stays.
	require.Zero(t, c.run(20))
	require.Zero(t, c.run(6, speech(b, 10)))
	require.Zero(t, c.run(10))
	require.Zero(t, c.run(2, speech(b, 3)))
	require.Zero(t, c.run(30))
	require.Equal(t, a, c.d.Dominant())
}

func TestSpeakerOverlap(t *testing.T) {
	a, b := pid(1), pid(2)
	c := newSpeakerClock(t, DefaultSpeakerConfig())
	c.run(20, speech(a, 35))
	// As loud as A: never.
	require.Zero(t, c.run(50, speech(a, 35), speech(b, 35)))
	// Louder (activity 0.96 against 0.70): B has 20 of 20 speech ticks
	// already and needs 1.25 times A's long-window activity, which 14 loud
	// ticks in 20 give (14×245 + 6×179 > 1.25 × 20×179).
	require.Equal(t, 14, c.run(20, speech(a, 35), speech(b, 22)))
	require.Equal(t, b, c.d.Dominant())
}

func TestSpeakerPlausibility(t *testing.T) {
	p := pid(9)
	cases := []struct {
		name       string
		o          Observation
		discounted bool
		speech     bool
	}{
		{"speech", speech(p, 30), false, true},
		{"quiet speech", speech(p, 58), false, true},
		{"too quiet for speech", speech(p, 65), false, false},
		{"dtx silence", dtx(p), false, false},
		{"two voiced of five", Observation{Participant: p, Packets: 5, VoicePackets: 2, PayloadBytes: 300, MeanLevel: 40}, false, false},
		{"one tiny packet shouting", Observation{Participant: p, Packets: 1, VoicePackets: 1, PayloadBytes: 4, Onset: true}, true, false},
		{"right rate, dtx payloads", Observation{Participant: p, Packets: 5, VoicePackets: 5, PayloadBytes: 20}, true, false},
		{"too few packets", Observation{Participant: p, Packets: 2, VoicePackets: 2, PayloadBytes: 200, MeanLevel: 10}, true, false},
		{"no claim, few packets", Observation{Participant: p, Packets: 2, PayloadBytes: 6, MeanLevel: 100}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := NewSpeakerDetector(DefaultSpeakerConfig())
			now := time.Unix(1e9, 0)
			d.Observe(now, c.o)
			d.Decide(now)
			require.Equal(t, c.discounted, d.Discounted() == 1)
			require.Equal(t, c.speech, d.Active(p))
			require.Equal(t, c.speech, d.parts[d.byID[p]].imm)
		})
	}

	// The thresholds are configuration: at 10 packets/s, 2 per tick pass.
	cfg := DefaultSpeakerConfig()
	cfg.MinPacketRate = 10
	d := NewSpeakerDetector(cfg)
	d.Observe(time.Unix(1e9, 0), Observation{Participant: p, Packets: 2, VoicePackets: 2, PayloadBytes: 200, MeanLevel: 10, Onset: true})
	require.Zero(t, d.Discounted())
	require.True(t, d.Active(p))
}

func TestSpeakerSilenceFillAndLateTicks(t *testing.T) {
	a := pid(1)
	d := NewSpeakerDetector(DefaultSpeakerConfig())
	base := time.Unix(1e9, 0)
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	d.Observe(at(100), speech(a, 30))
	d.Observe(at(200), speech(a, 30))
	// Tick 300 is late: Decide at 355 fills it in as silence...
	d.Decide(at(355))
	e := &d.parts[0]
	require.False(t, e.imm, "the overdue tick is silent")
	require.Equal(t, 2, e.med)
	require.False(t, d.Active(a))
	// ...tick 400 arrives before it, then 300 itself: it lands in its slot.
	d.Observe(at(402), speech(a, 30))
	d.Observe(at(298), speech(a, 30))
	d.Decide(at(410))
	require.Equal(t, 4, e.med)
	require.True(t, d.Active(a))
	// A member silent for a long time (no observations at all).
	d.Decide(at(60_000))
	require.Zero(t, e.long)
	require.False(t, d.Active(a))
	require.Equal(t, at(402), d.State().LastSpoke[a])
}

func TestSpeakerRecent(t *testing.T) {
	a, b, c, x := pid(1), pid(2), pid(3), pid(4)
	k := newSpeakerClock(t, DefaultSpeakerConfig())
	k.run(10, speech(a, 30)) // A becomes dominant
	k.run(1, speech(b, 30))
	k.run(1, speech(c, 30))
	k.run(1, dtx(x)) // x only ever sends silence
	var buf [8]protocol.ID
	got := k.d.Recent(k.now, 5*time.Second, 8, buf[:0])
	require.Equal(t, []protocol.ID{a, c, b}, got, "dominant first, then most recent first")
	require.Equal(t, []protocol.ID{a, c}, k.d.Recent(k.now, 5*time.Second, 2, buf[:0]))
	require.Empty(t, k.d.Recent(k.now, 5*time.Second, 0, buf[:0]))
	// C and B spoke 1.1 and 1.2 s ago, A 1.3 s: a 1.15 s window keeps C.
	later := k.now.Add(time.Second)
	require.Equal(t, []protocol.ID{c}, k.d.Recent(later, 1150*time.Millisecond, 8, buf[:0]))
	require.Empty(t, k.d.Recent(later.Add(time.Minute), 5*time.Second, 8, buf[:0]))
	// Same time: ordered by id.
	k.tick(speech(c, 30), speech(b, 30))
	require.Equal(t, []protocol.ID{a, b, c}, k.d.Recent(k.now, 5*time.Second, 8, buf[:0]))
	allocs := testing.AllocsPerRun(100, func() { k.d.Recent(k.now, 5*time.Second, 8, buf[:0]) })
	require.Zero(t, allocs)
}

func TestSpeakerRemove(t *testing.T) {
	a, b, c := pid(1), pid(2), pid(3)
	k := newSpeakerClock(t, DefaultSpeakerConfig())
	k.run(1, speech(a, 30), dtx(b))
	k.run(10, speech(c, 30))
	require.Equal(t, c, k.d.Dominant())
	// Removing a moves the last entry (c, the dominant) into its slot.
	k.d.Remove(a)
	require.Equal(t, c, k.d.Dominant())
	k.d.Remove(pid(99)) // unknown: nothing
	dom, ch := k.tick()
	require.Equal(t, c, dom)
	require.False(t, ch)
	k.d.Remove(c)
	dom, ch = k.tick()
	require.True(t, dom.IsZero())
	require.True(t, ch, "losing the dominant speaker is a change")
	require.Len(t, k.d.parts, 1)
	require.NotContains(t, k.d.Recent(k.now, time.Hour, 8, nil), c)
	// Observing the zero id does nothing.
	k.d.Observe(k.now, speech(protocol.ID{}, 30))
	require.Len(t, k.d.parts, 1)
}

func statesEqual(t *testing.T, want, got statestore.SpeakerState) {
	t.Helper()
	require.Equal(t, want.Dominant, got.Dominant)
	require.True(t, want.Since.Equal(got.Since), "since %v != %v", want.Since, got.Since)
	require.Len(t, got.LastSpoke, len(want.LastSpoke))
	for id, w := range want.LastSpoke {
		g, ok := got.LastSpoke[id]
		require.True(t, ok, "missing %s", id)
		require.True(t, w.Equal(g), "%s: %v != %v", id, w, g)
	}
}

// The detector's state survives its checkpoint (statestore owns the
// layout and tests it byte by byte), and a new conductor resumes from it.
func TestSpeakerStateRoundTrip(t *testing.T) {
	a, b := pid(1), pid(2)
	k := newSpeakerClock(t, DefaultSpeakerConfig())
	k.run(10, speech(a, 30))
	k.run(3, speech(b, 30))
	st := k.d.State()
	require.Equal(t, a, st.Dominant)
	require.Len(t, st.LastSpoke, 2)

	raw, err := st.MarshalBinary()
	require.NoError(t, err)
	var back statestore.SpeakerState
	require.NoError(t, back.UnmarshalBinary(raw))
	statesEqual(t, st, back)

	// A new conductor resumes: same dominant, no reported change, the same
	// forwarding set, and the dwell counts from the original switch.
	d2 := NewSpeakerDetector(DefaultSpeakerConfig())
	d2.Restore(back)
	dom, ch := d2.Decide(k.now)
	require.Equal(t, a, dom)
	require.False(t, ch)
	require.Equal(t, k.d.Recent(k.now, 5*time.Second, 8, nil), d2.Recent(k.now, 5*time.Second, 8, nil))
	statesEqual(t, st, d2.State())

	// The empty state restores to a detector with nobody dominant.
	d3 := NewSpeakerDetector(DefaultSpeakerConfig())
	d3.Restore(statestore.SpeakerState{})
	dom, ch = d3.Decide(k.now)
	require.True(t, dom.IsZero())
	require.False(t, ch)
}

// FuzzRestore: whatever speaker state a checkpoint in Redis decodes to, the
// detector restores it and decides on without panicking. (The decoding
// itself is fuzzed by statestore's FuzzSpeakerState.)
func FuzzRestore(f *testing.F) {
	k := &speakerClock{d: NewSpeakerDetector(DefaultSpeakerConfig()), now: time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)}
	k.run(10, speech(pid(1), 30))
	k.run(3, speech(pid(2), 30))
	live := k.d.State()
	for _, s := range []statestore.SpeakerState{{}, live,
		{Dominant: pid(9), Since: time.Unix(1700000000, 0)}, // a dominant speaker with no speech time
	} {
		b, err := s.MarshalBinary()
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s statestore.SpeakerState
		if err := s.UnmarshalBinary(b); err != nil {
			require.ErrorIs(t, err, statestore.ErrCorrupt)
			return
		}
		d := NewSpeakerDetector(DefaultSpeakerConfig())
		d.Restore(s)
		now := s.Since.Add(time.Second)
		d.Decide(now)
		d.Observe(now, speech(pid(1), 30))
		d.Decide(now.Add(100 * time.Millisecond))
		d.Recent(now, 5*time.Second, 8, nil)
	})
}

func TestRestoreCorpus(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzRestore"))
	require.NoError(t, err)
	require.NotEmpty(t, entries, "the committed seed corpus is missing")
}

func TestSpeakerConfigValidate(t *testing.T) {
	require.NoError(t, DefaultSpeakerConfig().Validate())
	require.NoError(t, SpeakerConfig{}.Validate(), "zero fields take defaults")
	for name, f := range map[string]func(*SpeakerConfig){
		"grace":   func(c *SpeakerConfig) { c.Grace = c.Tick },
		"frame":   func(c *SpeakerConfig) { c.Frame = time.Second },
		"voiced":  func(c *SpeakerConfig) { c.MinVoiced = 1.5 },
		"levels":  func(c *SpeakerConfig) { c.LoudLevel = 80 },
		"long":    func(c *SpeakerConfig) { c.LongTicks = 40 },
		"turn":    func(c *SpeakerConfig) { c.TurnTicks = 11 },
		"overlap": func(c *SpeakerConfig) { c.OverlapTicks = 21 },
		"margin":  func(c *SpeakerConfig) { c.OverlapMargin = 0.5 },
	} {
		c := DefaultSpeakerConfig()
		f(&c)
		require.Error(t, c.Validate(), name)
	}
}

func TestSpeakerNoAllocs(t *testing.T) {
	ids := []protocol.ID{pid(1), pid(2), pid(3), pid(4), pid(5)}
	d := NewSpeakerDetector(DefaultSpeakerConfig())
	now := time.Unix(1e9, 0)
	var buf [8]protocol.ID
	step := func() {
		now = now.Add(100 * time.Millisecond)
		for i, id := range ids {
			if i == 0 || now.UnixMilli()%3000 < 700 && i == 2 {
				d.Observe(now, speech(id, 30))
			} else {
				d.Observe(now, dtx(id))
			}
		}
		d.Decide(now)
		d.Recent(now, 5*time.Second, 4, buf[:0])
	}
	for range 50 {
		step()
	}
	require.Zero(t, testing.AllocsPerRun(1000, step))
}

// BenchmarkSpeakerDecide runs 10,000 calls of 2 to 8 members; every
// iteration is one 100 ms tick: each member of each call is observed once
// and each call decided once. Speakers take turns of 4 s with a 400 ms
// backchannel in each.
func BenchmarkSpeakerDecide(b *testing.B) {
	const calls = 10_000
	type call struct {
		d   *SpeakerDetector
		ids []protocol.ID
	}
	cs := make([]call, calls)
	for i := range cs {
		n := 2 + i%7
		cs[i] = call{d: NewSpeakerDetector(DefaultSpeakerConfig()), ids: make([]protocol.ID, n)}
		for m := range cs[i].ids {
			cs[i].ids[m] = protocol.ID{byte(i >> 8), byte(i), 15: byte(m + 1)}
		}
	}
	base := time.Unix(1e9, 0)
	k := 0
	step := func() {
		k++
		now := base.Add(time.Duration(k) * 100 * time.Millisecond)
		for i := range cs {
			c := &cs[i]
			n := len(c.ids)
			turn, phase := (k/40+i)%n, k%40
			for m, id := range c.ids {
				if m == turn || m == (turn+1)%n && phase >= 20 && phase < 24 {
					c.d.Observe(now, speech(id, 30))
				} else if (k+m)%4 == 0 {
					c.d.Observe(now, dtx(id))
				}
			}
			c.d.Decide(now)
		}
	}
	for range 50 {
		step()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		step()
	}
	b.ReportMetric(float64(b.N)*calls/b.Elapsed().Seconds(), "decisions/s")
}
