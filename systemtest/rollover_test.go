package systemtest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// The rollover proofs (issue 16, item 2): every member decrypts every
// other member whenever it joined, and whichever simulcast layer it is
// switched to, although SRTP needs the count of the sender's sequence
// number wraps (the ROC) and a late receiver cannot count them. A real
// forwarder and conductor over real UDP; devices on the client library,
// each with its own key, exchanged out of band (here: by the test).

// rollStart is every stream's first sequence number: each wraps to 0
// after 100 packets, 2 s of audio.
const rollStart = 65536 - 100

// afterWrap reports whether seq belongs to a stream's second cycle (ROC 1)
// and lies at least 10 packets into it. A stream that starts at rollStart
// only reaches sequence numbers below it after wrapping.
func afterWrap(seq uint16) bool { return seq >= 10 && seq < rollStart }

// seen is what a device decrypted of one stream.
type seen struct {
	opened, failed int
	first, last    uint16 // sequence numbers of the first and latest packet decrypted
	wrapped        bool   // a packet at least 10 into the stream's second cycle decrypted
}

// edev is a device that decrypts everything it receives.
type edev struct {
	name  string
	id    protocol.ID
	key   client.MediaKey
	audio uint32                              // its audio SSRC
	video [protocol.MaxSimulcastLayers]uint32 // its camera's SSRCs
	conn  *client.Conn
	fb    *client.Feedback
	recv  *client.Receiver
	cam   atomic.Pointer[client.VideoSender]

	mu      sync.Mutex
	streams map[uint32]*seen
	unknown int // packets from an SSRC it has no key for
	done    chan struct{}
}

func newEdev(name string) *edev {
	d := &edev{name: name, id: protocol.NewID(), key: client.NewMediaKey(), audio: randSSRC(),
		recv: client.NewReceiver(), streams: map[uint32]*seen{}, done: make(chan struct{})}
	for i := range d.video {
		d.video[i] = randSSRC()
	}
	return d
}

// learn gives d the keys of others' streams, as the application's
// end-to-end key exchange would.
func (d *edev) learn(t *testing.T, others ...*edev) {
	t.Helper()
	for _, o := range others {
		if o == d {
			continue
		}
		require.NoError(t, d.recv.AddSender(o.audio, o.key))
		for _, s := range o.video {
			require.NoError(t, d.recv.AddSender(s, o.key))
		}
	}
}

// dial joins d to call through fwd and starts its receive loop.
func (e *env) dialE2E(t *testing.T, d *edev, call protocol.ID, fwd netip.AddrPort) {
	t.Helper()
	tok, err := protocol.SignToken(e.priv, protocol.Token{CallID: call, ParticipantID: d.id,
		Class: protocol.ClassGroup, MaxSize: 8, Expiry: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.conn, err = client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: tok, LocalAddr: calltest.Loopback})
	require.NoError(t, err)
	d.fb = client.NewFeedback(d.conn, client.FeedbackConfig{SSRC: randSSRC()})
	go d.receive()
	t.Cleanup(func() {
		if v := d.cam.Load(); v != nil {
			v.Close()
		}
		d.fb.Close()
		_ = d.conn.Close()
		<-d.done
	})
}

func (d *edev) receive() {
	defer close(d.done)
	var hdr rtp.Header
	plain := make([]byte, client.MaxPacketSize)
	for p := range d.conn.Media() {
		if d.fb.Observe(p) { // duplicates and relay probes are not for the application
			switch p.Kind {
			case protocol.KindRTP:
				_, err := d.recv.Open(plain, p.Data, &hdr)
				d.note(hdr.SSRC, hdr.SequenceNumber, err)
			case protocol.KindRTCP:
				if v := d.cam.Load(); v != nil {
					v.HandleRTCP(p.Data)
				}
			}
		}
		p.Release()
	}
}

func (d *edev) note(ssrc uint32, seq uint16, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if errors.Is(err, client.ErrUnknownSSRC) {
		d.unknown++
		return
	}
	s := d.streams[ssrc]
	if s == nil {
		s = &seen{}
		d.streams[ssrc] = s
	}
	if err != nil {
		s.failed++
		return
	}
	if s.opened == 0 {
		s.first = seq
	}
	s.opened++
	s.last = seq
	s.wrapped = s.wrapped || afterWrap(seq)
}

func (d *edev) stream(ssrc uint32) seen {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.streams[ssrc]; s != nil {
		return *s
	}
	return seen{}
}

// talk sends speech from rollStart on, 50 packets/s, until stop.
func (d *edev) talk(t *testing.T, stop <-chan struct{}, wg *sync.WaitGroup) {
	t.Helper()
	snd, err := client.NewSender(client.SenderConfig{SSRC: d.audio, PayloadType: 111, Key: d.key, FirstSequence: rollStart})
	require.NoError(t, err)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		payload := make([]byte, 80)
		var buf []byte
		for n := uint32(0); ; n++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			_ = snd.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, time.Now())
			buf, err = snd.Seal(buf[:0], client.Sample{Payload: payload, Timestamp: n * 960,
				AudioLevel: client.AudioLevel{Level: 20, Voice: true}})
			if err == nil {
				_ = d.conn.WriteRTP(buf)
			}
		}
	}()
}

// camera starts d's video, every layer from rollStart on.
func (d *edev) camera(t *testing.T) {
	t.Helper()
	v, err := client.NewVideoSender(d.conn, client.VideoConfig{SSRCs: d.video, Key: d.key,
		InitialBitrate: 600_000, FirstSequence: rollStart})
	require.NoError(t, err)
	d.cam.Store(v)
}

// watch subscribes d to cam's video at most maxHeight pixels high.
func (d *edev) watch(t *testing.T, cam *edev, maxHeight uint16) {
	t.Helper()
	require.NoError(t, d.conn.Subscribe([]protocol.VideoSubscription{{Participant: cam.id, MaxHeight: maxHeight}}))
}

// decryptsAfterWrap polls until d has decrypted, of every stream in
// ssrcs, at least n packets and one 10 or more into its second cycle.
func (d *edev) decryptsAfterWrap(t *testing.T, n int, what string, ssrcs ...uint32) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, s := range ssrcs {
			if st := d.stream(s); st.opened < n || !st.wrapped {
				return fmt.Errorf("%s: %s: SSRC %#x: %d decrypted (%d failed), last seq %d, past the wrap: %v",
					d.name, what, s, st.opened, st.failed, st.last, st.wrapped)
			}
		}
		return nil
	})
}

// noFailures requires that d failed to decrypt nothing it received.
func (d *edev) noFailures(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	require.Zero(t, d.unknown, "%s: packets from SSRCs without a key", d.name)
	for ssrc, s := range d.streams {
		require.Zero(t, s.failed, "%s: SSRC %#x: %d of %d packets failed to decrypt", d.name, ssrc, s.failed, s.failed+s.opened)
	}
}

// TestLateJoinerDecryptsAfterRollover: a call of three, one with its camera
// on and two watching it at different heights, so the sender splits into a
// low and a high simulcast layer; every stream starts 100 packets short of
// the sequence number's wrap. Once every stream (three audio streams and
// both layers) is 10 packets or more past its wrap, two devices join: one
// watching the low layer, one the high. Each decrypts every member's audio
// and its layer from the first packet on, with no failure. Then each
// switches to the other layer, which rolled over long before it got any of
// it, and decrypts that too.
func TestLateJoinerDecryptsAfterRollover(t *testing.T) {
	e := newEnv(t)
	f := e.forwarder(t, "fwd-a")
	e.conductor(t, "cond-1", nil)
	call := protocol.NewID()
	cam, low, high := newEdev("cam"), newEdev("low"), newEdev("high")
	late1, late2 := newEdev("late-low"), newEdev("late-high")
	all := []*edev{cam, low, high, late1, late2}
	for _, d := range all {
		d.learn(t, all...)
	}
	for _, d := range all[:3] {
		e.dialE2E(t, d, call, f.Addr())
	}
	low.watch(t, cam, 180)  // the low layer's height (conductor.VideoLadder)
	high.watch(t, cam, 720) // the high layer's
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	for _, d := range all[:3] {
		d.talk(t, stop, &wg)
	}
	cam.camera(t)

	// Every stream rolls over: each early member decrypts the others'
	// audio and its layer across the wrap (a receiver in sync needs no
	// hint), 10 and more packets into the second cycle.
	lowLayer, highLayer := cam.video[0], cam.video[1]
	low.decryptsAfterWrap(t, 20, "before the late join", cam.audio, high.audio, lowLayer)
	high.decryptsAfterWrap(t, 20, "before the late join", cam.audio, low.audio, highLayer)
	cam.decryptsAfterWrap(t, 20, "before the late join", low.audio, high.audio)
	require.Equal(t, 2, cam.cam.Load().Stats().Layers, "the camera sends two layers")
	t.Logf("the late devices join at sequence numbers %d (cam's audio), %d (low's), %d (high's), %d (low layer), %d (high layer), every stream's ROC 1",
		low.stream(cam.audio).last, high.stream(low.audio).last, low.stream(high.audio).last,
		low.stream(lowLayer).last, high.stream(highLayer).last)

	// Two late joiners, one per layer.
	e.dialE2E(t, late1, call, f.Addr())
	e.dialE2E(t, late2, call, f.Addr())
	late1.watch(t, cam, 180)
	late2.watch(t, cam, 720)
	late1.decryptsAfterWrap(t, 50, "late join", cam.audio, low.audio, high.audio, lowLayer)
	late2.decryptsAfterWrap(t, 50, "late join", cam.audio, low.audio, high.audio, highLayer)
	late1.joinedPastWrap(t)
	late2.joinedPastWrap(t)

	// Each late joiner switches to the other layer, rolled over long ago.
	late1.watch(t, cam, 720)
	late2.watch(t, cam, 180)
	late1.decryptsAfterWrap(t, 50, "switched to the high layer", highLayer)
	late2.decryptsAfterWrap(t, 50, "switched to the low layer", lowLayer)
	late1.joinedPastWrap(t)
	late2.joinedPastWrap(t)
	for _, d := range all {
		d.noFailures(t)
		require.Zero(t, d.recv.Stats().ROCHintsRejected, "%s", d.name)
	}
	require.Zero(t, f.Stats().Drops[forwarder.DropMalformed], "the relay takes the rollover counter as any extension")
}

// joinedPastWrap requires that every stream d decrypted began, for d, 10
// packets or more past its wrap, and decrypted from that first packet on,
// with the ROC from its hint: the streams the Receiver started at ROC 1 are
// all of them.
func (d *edev) joinedPastWrap(t *testing.T) {
	t.Helper()
	d.noFailures(t)
	d.mu.Lock()
	n := 0
	for ssrc, s := range d.streams {
		require.True(t, afterWrap(s.first), "%s: SSRC %#x: first packet at seq %d, not past the wrap", d.name, ssrc, s.first)
		n++
	}
	d.mu.Unlock()
	rs := d.recv.Stats()
	t.Logf("%s: %d streams, every one decrypted from its first packet past the wrap; %+v", d.name, n, rs)
	require.Equal(t, uint64(n), rs.FirstROC, "%s: every stream started from its hint", d.name) //nolint:gosec // a handful
	require.Zero(t, rs.ROCFromHint, "%s: and stayed in sync", d.name)
}
