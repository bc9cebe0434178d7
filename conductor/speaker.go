/*
Dominant speaker detection.

The forwarders cannot hear the calls they carry (the media is end-to-end
encrypted); what they see is, per audio packet, the RFC 6464 audio level the
sender claims (-dBov, 0 loudest .. 127 silence), the sender's voice-activity
flag (the V bit), the packet's size and its arrival. Every tick (~100 ms)
they summarise that per member into an Observation. SpeakerDetector turns
these summaries into "who is speaking" (the dominant speaker, shown big in
UIs) and "who spoke lately" (the audio forwarding set).

The method follows Volfin and Cohen, "Dominant speaker identification for
multipoint videoconferencing" (Computer Speech & Language, 2013; the method
behind Jitsi's dominant speaker detection): speech is judged over several time
scales at once, and a challenger replaces the dominant speaker only when the
evidence at every scale agrees. Their per-frame sub-band likelihood scores
need the audio itself; here the unit of evidence is a forwarder tick.

# 1. Per tick: plausibility, activity and speech

Levels are claimed by the sending device in clear, so they are checked
against what the packets could carry. Opus speech at 20 ms frames is 5
packets per 100 ms of 40-160 bytes; DTX silence is about one packet of a few
bytes per 400 ms. A tick is implausible when it has fewer than
MinPacketRate×Tick packets (3 per 100 ms) or its payload averages under
MinMeanPayload (30 bytes) per packet. An implausible tick counts as silence
whatever it claims, and if it claimed anything (a voice-flagged packet, a
level at or above SpeechLevel, an onset) it is counted in Discounted. A
muted or DTX stream that claims to shout therefore never takes the floor.

For a plausible tick:

	voiced   = VoicePackets / max(Packets, Tick/Frame)         in [0, 1]
	loudness = (QuietLevel - MeanLevel) / (QuietLevel - LoudLevel), clamped to [0, 1]
	activity = loudness × voiced

The tick is a speech tick when voiced >= MinVoiced (0.6: at least 3 of the 5
frames are voice-flagged) and MeanLevel <= SpeechLevel (-60 dBov or
louder). Requiring most of a tick's frames to be voiced keeps the count of
speech ticks honest about speech time: 30 consecutive frames (600 ms) give
at most 6 speech ticks whatever their phase against the tick grid (six full
ticks, or five full ones and a 3+2 or 4+1 split of which one side counts);
31 frames can give 7. Senders
that never set the V bit are never speech: every client of ours sets it.

# 2. Three time scales

Each participant keeps its last 32 ticks in a fixed ring (no allocation once
the participant is known). Ticks are the participant's own: an observation
fills the next slot, whatever its phase against other forwarders' ticks.
When the detector is advanced to now and a participant's next tick is more
than Grace (half a tick) overdue, a silent tick is filled in; an
observation that arrives late (even after a newer one) is merged into the
slot it belongs to. From the ring:

	immediate   the newest tick is a speech tick; "speaking now" allows one
	            tick of hangover (either of the two newest ticks)         ~0.1 s
	medium      speech ticks among the last MediumTicks (10)              ~1 s
	long        speech ticks among the last LongTicks (20), and the sum
	            of their activity                                         ~2 s

# 3. Switch rules

No switch happens within MinDwell (1 s) of the previous one. After that, a
challenger must be speaking now and steadily: at least TurnTicks (7) speech
ticks in its medium window, i.e. 0.7 s of speech in the last second. Then
it takes the floor by

  - election: there is no dominant speaker yet; or
  - turn-taking: the dominant speaker is not speaking now (neither of its two
    newest ticks, so one late or lost tick does not hand its floor away) and
    has at most 1/TurnRatio (half) as many speech ticks in its medium window
    as the challenger: it has stopped, or only says "mm" now and then; or
  - overlap: the challenger has OverlapTicks (18) speech ticks in the long
    window (it has talked for ~2 s, even over the dominant speaker) and its
    long-window activity exceeds the dominant speaker's by the factor
    OverlapMargin (1.25): it is louder, or talks more of the time.

Among several challengers the one with the most long-window activity wins
(ties: the earlier known participant). A dominant speaker stays when
everybody falls silent; only Remove clears it.

What the rules guarantee, and why the constants:

  - A cough (one or two loud ticks, <= 200 ms) gives at most 2 speech ticks,
    a fit of three coughs in a second at most 6: never 7.
  - An interjection or backchannel <= 600 ms gives at most 6 speech ticks, so
    it never switches, even when it falls into a pause of the dominant
    speaker; two of them count together only if less than a second apart,
    when they are really one utterance.
  - While the dominant speaker keeps talking (more than half the time) only
    the overlap rule applies, and that needs 1.8 s of speech and 25 % more
    activity: two people talking over each other at the same level and rate
    never flip the floor.
  - Turn-taking switches 0.7 s after the new speaker starts when the
    previous one had stopped; the tick grid and the decision phase add up to
    two ticks, so within 0.9 s (asserted at 1.0 s in the scenario tests).
    When the previous speaker trails on, the switch comes once the new
    speaker has twice its speech over the last second.
  - MinDwell bounds the switch rate to one per second: no flapping.
  - Time only comes in as arguments: the detector never reads the clock.

The measured figures (switch latency, false switches) on scripted and P.59
generated conversations are in speaker_scenarios_test.go.
*/

package conductor

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Observation is one member's audio over one forwarder tick.
type Observation struct {
	Participant  protocol.ID
	Tick         time.Duration // the tick length (normally 100ms)
	Packets      int           // audio packets in the tick (Opus at 20 ms: 5 per 100 ms; DTX silence: ~0-1)
	VoicePackets int           // of which the sender's VAD flagged speech (RFC 6464 V bit)
	PayloadBytes int           // sum of encrypted payload bytes of those packets
	MeanLevel    uint8         // RFC 6464 -dBov, 0 loudest .. 127 silence
	MaxLevel     uint8         // loudest packet in the tick (not used by the scores: a single loud packet is a cough's signature)
	Onset        bool          // the forwarder saw a loud onset (level step or device flag)
}

// speakerRing is the number of ticks kept per participant; LongTicks may not
// exceed it.
const speakerRing = 32

// SpeakerConfig tunes the dominant speaker detector. The zero value of a
// field means its default (see DefaultSpeakerConfig).
type SpeakerConfig struct {
	// Tick is the length of one ring slot, the forwarders' tick (100 ms).
	Tick time.Duration
	// Grace is how overdue a participant's next tick must be before the
	// detector counts it as silent (50 ms, half a tick).
	Grace time.Duration
	// Frame is the audio frame duration the senders use (20 ms); Tick/Frame
	// packets per tick are expected during speech.
	Frame time.Duration

	// MinPacketRate, in packets per second, is the least a tick must carry
	// for its level to be believed (30/s: 3 per 100 ms tick).
	MinPacketRate float64
	// MinMeanPayload, in bytes, is the least mean payload per packet for a
	// tick's level to be believed (30 bytes; DTX frames are a few bytes).
	MinMeanPayload int

	// SpeechLevel, in -dBov, is the quietest mean level a speech tick may
	// have (60 = -60 dBov).
	SpeechLevel uint8
	// QuietLevel and LoudLevel, in -dBov, span the loudness ramp: a mean
	// level of QuietLevel (70) or quieter scores 0, LoudLevel (20) or
	// louder scores 1.
	QuietLevel, LoudLevel uint8
	// MinVoiced is the fraction of a tick's expected packets that must be
	// voice-flagged for a speech tick (0.6: 3 of 5).
	MinVoiced float64

	// MediumTicks and LongTicks are the medium and long windows, in ticks
	// (10 = 1 s and 20 = 2 s at 100 ms ticks). LongTicks <= 32.
	MediumTicks, LongTicks int
	// TurnTicks is the number of speech ticks in the medium window a
	// challenger needs, i.e. how long it must have been speaking steadily
	// (7: more than any 600 ms interjection can produce).
	TurnTicks int
	// TurnRatio: in turn-taking, the challenger's speech ticks in the medium
	// window must be at least TurnRatio (2) times the dominant speaker's.
	TurnRatio float64
	// OverlapTicks is the number of speech ticks in the long window a
	// challenger needs to take over from a dominant speaker who is still
	// talking (18 = 1.8 s).
	OverlapTicks int
	// OverlapMargin is the factor by which such a challenger's long-window
	// activity must exceed the dominant speaker's (1.25).
	OverlapMargin float64
	// MinDwell is the least time between two switches (1 s).
	MinDwell time.Duration
}

// DefaultSpeakerConfig returns the tuning explained in the comment at the
// top of speaker.go.
func DefaultSpeakerConfig() SpeakerConfig {
	return SpeakerConfig{
		Tick:           100 * time.Millisecond,
		Grace:          50 * time.Millisecond,
		Frame:          20 * time.Millisecond,
		MinPacketRate:  30,
		MinMeanPayload: 30,
		SpeechLevel:    60,
		QuietLevel:     70,
		LoudLevel:      20,
		MinVoiced:      0.6,
		MediumTicks:    10,
		LongTicks:      20,
		TurnTicks:      7,
		TurnRatio:      2,
		OverlapTicks:   18,
		OverlapMargin:  1.25,
		MinDwell:       time.Second,
	}
}

// withDefaults fills zero fields from DefaultSpeakerConfig.
func (c SpeakerConfig) withDefaults() SpeakerConfig {
	d := DefaultSpeakerConfig()
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setF := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	setDur(&c.Tick, d.Tick)
	setDur(&c.Grace, c.Tick/2)
	setDur(&c.Frame, d.Frame)
	setDur(&c.MinDwell, d.MinDwell)
	setF(&c.MinPacketRate, d.MinPacketRate)
	setF(&c.MinVoiced, d.MinVoiced)
	setF(&c.OverlapMargin, d.OverlapMargin)
	setF(&c.TurnRatio, d.TurnRatio)
	setInt(&c.MinMeanPayload, d.MinMeanPayload)
	setInt(&c.MediumTicks, d.MediumTicks)
	setInt(&c.LongTicks, d.LongTicks)
	setInt(&c.TurnTicks, d.TurnTicks)
	setInt(&c.OverlapTicks, d.OverlapTicks)
	if c.SpeechLevel == 0 {
		c.SpeechLevel = d.SpeechLevel
	}
	if c.QuietLevel == 0 {
		c.QuietLevel = d.QuietLevel
	}
	if c.LoudLevel == 0 {
		c.LoudLevel = d.LoudLevel
	}
	return c
}

// Validate says what to fix in a configuration (zero fields are taken as
// their defaults first).
func (c SpeakerConfig) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("speaker: "+format, args...)) }
	if c.Tick < 0 || c.Grace < 0 || c.Grace >= c.Tick || c.Frame < 0 || c.Frame > c.Tick || c.MinDwell < 0 {
		bad("want 0 < Frame <= Tick, 0 <= Grace < Tick, MinDwell >= 0; have Tick %v, Grace %v, Frame %v, MinDwell %v",
			c.Tick, c.Grace, c.Frame, c.MinDwell)
	}
	if c.MinPacketRate < 0 || c.MinMeanPayload < 0 || c.MinVoiced < 0 || c.MinVoiced > 1 {
		bad("want MinPacketRate >= 0, MinMeanPayload >= 0, 0 < MinVoiced <= 1; have %v, %d, %v",
			c.MinPacketRate, c.MinMeanPayload, c.MinVoiced)
	}
	if c.QuietLevel > 127 || c.LoudLevel >= c.QuietLevel || c.SpeechLevel > 127 {
		bad("want LoudLevel < QuietLevel <= 127 and SpeechLevel <= 127 (-dBov); have %d, %d, %d",
			c.LoudLevel, c.QuietLevel, c.SpeechLevel)
	}
	if c.MediumTicks < 1 || c.LongTicks < c.MediumTicks || c.LongTicks > speakerRing {
		bad("want 1 <= MediumTicks <= LongTicks <= %d; have %d, %d", speakerRing, c.MediumTicks, c.LongTicks)
	}
	for _, f := range []struct {
		name   string
		v, max int
	}{
		{"TurnTicks", c.TurnTicks, c.MediumTicks}, {"OverlapTicks", c.OverlapTicks, c.LongTicks},
	} {
		if f.v < 1 || f.v > f.max {
			bad("want 1 <= %s <= %d (its window); have %d", f.name, f.max, f.v)
		}
	}
	if c.OverlapMargin < 1 || c.TurnRatio < 1 {
		bad("want OverlapMargin >= 1 and TurnRatio >= 1; have %v, %v", c.OverlapMargin, c.TurnRatio)
	}
	return errors.Join(errs...)
}

// tickVal is one ring slot.
type tickVal struct {
	act    uint8 // activity × 255
	speech bool
	onset  bool // plausible tick with a loud onset
}

// speakerEntry is one participant's detector state.
type speakerEntry struct {
	id        protocol.ID
	ring      [speakerRing]tickVal
	n         uint64    // ticks pushed so far; the newest is ring[(n-1)%speakerRing]
	lastEnd   time.Time // end of the newest slot; zero before the first
	lastSpoke time.Time // end of the newest speech tick

	// scores, computed by Decide
	imm     bool // the newest tick is a speech tick
	now     bool // one of the two newest ticks is (hangover of one tick)
	med     int
	long    int
	longAct int
}

func (e *speakerEntry) push(v tickVal) {
	e.ring[e.n%speakerRing] = v
	e.n++
}

// newest returns the newest slot (nil before the first).
func (e *speakerEntry) newest() *tickVal {
	if e.n == 0 {
		return nil
	}
	return &e.ring[(e.n-1)%speakerRing]
}

// SpeakerDetector decides a call's dominant speaker from its members'
// Observations. One per call; not safe for concurrent use.
type SpeakerDetector struct {
	cfg        SpeakerConfig
	byID       map[protocol.ID]int
	parts      []speakerEntry
	dom        int // index into parts, -1 for nobody
	since      time.Time
	reported   protocol.ID // what Decide last returned
	discounted uint64
	order      []int // scratch for Recent

	loudSpan              float64 // QuietLevel - LoudLevel
	expectPerTick, minPkt int     // perTick(cfg.Tick)
}

// NewSpeakerDetector returns a detector for one call. Zero fields of cfg
// take their defaults; cfg should pass Validate.
func NewSpeakerDetector(cfg SpeakerConfig) *SpeakerDetector {
	cfg = cfg.withDefaults()
	d := &SpeakerDetector{cfg: cfg, byID: make(map[protocol.ID]int), dom: -1}
	d.loudSpan = float64(int(cfg.QuietLevel) - int(cfg.LoudLevel))
	d.expectPerTick, d.minPkt = d.perTick(cfg.Tick)
	return d
}

// perTick returns the packets a speech tick of length tick is expected to
// carry and the least it must carry to be plausible.
func (d *SpeakerDetector) perTick(tick time.Duration) (expect, least int) {
	expect = max(1, int(tick/d.cfg.Frame))
	least = int(math.Ceil(d.cfg.MinPacketRate*tick.Seconds() - 1e-9))
	return expect, max(1, least)
}

// classify turns an observation into a ring slot, counting discounted ticks.
func (d *SpeakerDetector) classify(o *Observation) tickVal {
	expect, least := d.expectPerTick, d.minPkt
	if o.Tick > 0 && o.Tick != d.cfg.Tick {
		expect, least = d.perTick(o.Tick)
	}
	claimed := o.VoicePackets > 0 || o.MeanLevel <= d.cfg.SpeechLevel || o.Onset
	if o.Packets < least || o.PayloadBytes < d.cfg.MinMeanPayload*o.Packets {
		if claimed {
			d.discounted++
		}
		return tickVal{}
	}
	voiced := float64(min(max(o.VoicePackets, 0), o.Packets)) / float64(max(o.Packets, expect))
	loud := (float64(d.cfg.QuietLevel) - float64(min(o.MeanLevel, 127))) / d.loudSpan
	loud = min(max(loud, 0), 1)
	return tickVal{
		act:    uint8(loud*voiced*255 + 0.5),
		speech: voiced >= d.cfg.MinVoiced-1e-9 && o.MeanLevel <= d.cfg.SpeechLevel,
		onset:  o.Onset,
	}
}

// entry returns p's index, adding p if it is new.
func (d *SpeakerDetector) entry(p protocol.ID) int {
	if i, ok := d.byID[p]; ok {
		return i
	}
	d.parts = append(d.parts, speakerEntry{id: p})
	i := len(d.parts) - 1
	d.byID[p] = i
	return i
}

// Observe feeds one member's tick, ending at now. Ticks from several
// forwarders arrive with any phase. Observations for the zero ID are
// ignored.
func (d *SpeakerDetector) Observe(now time.Time, o Observation) {
	if o.Participant.IsZero() {
		return
	}
	e := &d.parts[d.entry(o.Participant)]
	v := d.classify(&o)
	if v.speech && now.After(e.lastSpoke) {
		e.lastSpoke = now
	}
	if e.lastEnd.IsZero() {
		e.push(v)
		e.lastEnd = now
		return
	}
	tick := d.cfg.Tick
	k := int64(now.Sub(e.lastEnd) / tick) // slots after the newest, rounded to the nearest
	if r := now.Sub(e.lastEnd) % tick; r >= tick/2 {
		k++
	} else if r <= -tick/2 {
		k--
	}
	if k <= 0 {
		// A slot already filled: a late observation for a slot filled in
		// as silent (possibly overtaken by a newer one), or a second
		// forwarder reporting the member (migration). Merge into it.
		if back := uint64(-k); back < e.n && back < speakerRing {
			sl := &e.ring[(e.n-1-back)%speakerRing]
			sl.act = max(sl.act, v.act)
			sl.speech = sl.speech || v.speech
			sl.onset = sl.onset || v.onset
		}
		return
	}
	cover := int64(1)
	if o.Tick > tick {
		cover = int64((o.Tick + tick/2) / tick)
	}
	cover = min(cover, k)
	for i := min(k-cover, speakerRing); i > 0; i-- {
		e.push(tickVal{})
	}
	for i := min(cover, speakerRing); i > 0; i-- {
		e.push(v)
	}
	e.lastEnd = now
}

// advance fills in silent ticks that are overdue at now.
func (d *SpeakerDetector) advance(e *speakerEntry, now time.Time) {
	if e.lastEnd.IsZero() {
		e.lastEnd = now // known from a restored state only: start the grid here
		return
	}
	over := now.Sub(e.lastEnd) - d.cfg.Grace
	if over < d.cfg.Tick {
		return
	}
	k := int64(over / d.cfg.Tick)
	for i := min(k, speakerRing); i > 0; i-- {
		e.push(tickVal{})
	}
	e.lastEnd = e.lastEnd.Add(time.Duration(k) * d.cfg.Tick)
}

// score computes e's time scales from its ring.
func (d *SpeakerDetector) score(e *speakerEntry) {
	c := &d.cfg
	e.imm, e.now, e.med, e.long, e.longAct = false, false, 0, 0, 0
	for i := 0; i < c.LongTicks && uint64(i) < e.n; i++ {
		v := e.ring[(e.n-1-uint64(i))%speakerRing]
		e.longAct += int(v.act)
		if !v.speech {
			continue
		}
		e.imm = e.imm || i == 0
		e.now = e.now || i < 2
		if i < c.MediumTicks {
			e.med++
		}
		e.long++
	}
}

// Decide advances the detector to now (members with no observation since
// their last one count as silent for the elapsed ticks) and returns the
// dominant speaker and whether it changed since the previous Decide.
func (d *SpeakerDetector) Decide(now time.Time) (dominant protocol.ID, changed bool) {
	for i := range d.parts {
		d.advance(&d.parts[i], now)
		d.score(&d.parts[i])
	}
	if next := d.challenger(now); next >= 0 {
		d.dom, d.since = next, now
	}
	dominant = d.Dominant()
	changed = dominant != d.reported
	d.reported = dominant
	return dominant, changed
}

// challenger returns the index of the participant that takes the floor at
// now, or -1.
func (d *SpeakerDetector) challenger(now time.Time) int {
	c := &d.cfg
	var dm *speakerEntry
	if d.dom >= 0 {
		if now.Sub(d.since) < c.MinDwell {
			return -1
		}
		dm = &d.parts[d.dom]
	}
	best, bestAct := -1, -1
	for i := range d.parts {
		e := &d.parts[i]
		if i == d.dom || !e.now || e.med < c.TurnTicks {
			continue // not speaking now, or not steadily
		}
		turn := dm == nil || (!dm.now && float64(e.med) >= c.TurnRatio*float64(dm.med))
		overlap := dm != nil && e.long >= c.OverlapTicks && float64(e.longAct) > c.OverlapMargin*float64(dm.longAct)
		if (turn || overlap) && e.longAct > bestAct {
			best, bestAct = i, e.longAct
		}
	}
	return best
}

// Dominant returns the current dominant speaker (zero for nobody).
func (d *SpeakerDetector) Dominant() protocol.ID {
	if d.dom < 0 {
		return protocol.ID{}
	}
	return d.parts[d.dom].id
}

// Recent returns up to limit participants that spoke (had a speech tick)
// within window before now, most recent first, the dominant speaker always
// first if it spoke within window. It is used for the audio forwarding set.
// The result reuses dst's storage (dst's contents are overwritten); with
// enough capacity it does not allocate.
func (d *SpeakerDetector) Recent(now time.Time, window time.Duration, limit int, dst []protocol.ID) []protocol.ID {
	dst = dst[:0]
	if limit <= 0 {
		return dst
	}
	recent := func(i int) bool {
		ls := d.parts[i].lastSpoke
		return !ls.IsZero() && !ls.After(now.Add(window)) && now.Sub(ls) <= window
	}
	d.order = d.order[:0]
	for i := range d.parts {
		if i != d.dom && recent(i) {
			d.order = append(d.order, i)
		}
	}
	// Insertion sort, newest first, ties by id: calls are small.
	for i := 1; i < len(d.order); i++ {
		for j := i; j > 0 && d.newer(d.order[j], d.order[j-1]); j-- {
			d.order[j], d.order[j-1] = d.order[j-1], d.order[j]
		}
	}
	if d.dom >= 0 && recent(d.dom) {
		dst = append(dst, d.parts[d.dom].id)
	}
	for _, i := range d.order {
		if len(dst) >= limit {
			break
		}
		dst = append(dst, d.parts[i].id)
	}
	return dst
}

// newer orders Recent: later lastSpoke first, then lower id.
func (d *SpeakerDetector) newer(a, b int) bool {
	ta, tb := d.parts[a].lastSpoke, d.parts[b].lastSpoke
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return bytes.Compare(d.parts[a].id[:], d.parts[b].id[:]) < 0
}

// Active reports whether p had an onset or a speech tick in its latest tick,
// so the conductor can add a fresh speaker to the forwarding set at once.
// Onsets in implausible ticks do not count.
func (d *SpeakerDetector) Active(p protocol.ID) bool {
	i, ok := d.byID[p]
	if !ok {
		return false
	}
	nw := d.parts[i].newest()
	return nw != nil && (nw.speech || nw.onset)
}

// Remove forgets p (it left the call). If p was the dominant speaker the
// call has none until someone is elected; the next Decide reports the change.
func (d *SpeakerDetector) Remove(p protocol.ID) {
	i, ok := d.byID[p]
	if !ok {
		return
	}
	delete(d.byID, p)
	last := len(d.parts) - 1
	switch d.dom {
	case i:
		d.dom = -1
	case last:
		d.dom = i
	}
	if i != last {
		d.parts[i] = d.parts[last]
		d.byID[d.parts[i].id] = i
	}
	d.parts[last] = speakerEntry{}
	d.parts = d.parts[:last]
}

// Discounted returns how many ticks the plausibility check discounted: ticks
// that claimed speech (a voice flag, a speech level or an onset) with too
// few packets or too small payloads to carry it.
func (d *SpeakerDetector) Discounted() uint64 { return d.discounted }

// State returns the detector's checkpointable state. LastSpoke holds the
// participants that have spoken.
func (d *SpeakerDetector) State() statestore.SpeakerState {
	s := statestore.SpeakerState{Dominant: d.Dominant(), Since: d.since, LastSpoke: make(map[protocol.ID]time.Time)}
	for i := range d.parts {
		if !d.parts[i].lastSpoke.IsZero() {
			s.LastSpoke[d.parts[i].id] = d.parts[i].lastSpoke
		}
	}
	return s
}

// Restore resumes from a checkpointed state: the dominant speaker (which
// Decide does not report as a change), its dwell start and the last speech
// times (a later one already observed is kept). The participants' recent
// ticks are not part of the state; they count as silent until observed.
func (d *SpeakerDetector) Restore(s statestore.SpeakerState) {
	for id, t := range s.LastSpoke {
		if id.IsZero() {
			continue
		}
		// Speech observed since (the metadata that made this call known)
		// is newer than the checkpoint's.
		if e := &d.parts[d.entry(id)]; t.After(e.lastSpoke) {
			e.lastSpoke = t
		}
	}
	d.dom, d.since = -1, s.Since
	if !s.Dominant.IsZero() {
		d.dom = d.entry(s.Dominant)
	}
	d.reported = s.Dominant
}
