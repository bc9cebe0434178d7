package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// addCall puts a group call with the given members in Redis.
func (e *env) addCall(t *testing.T, members ...protocol.ID) protocol.ID {
	t.Helper()
	call := protocol.NewID()
	for i, p := range members {
		_, err := e.store.AddMember(context.Background(), call, protocol.ClassGroup, 5, p, statestore.Member{Forwarder: "fwd-a",
			Addr: netip.MustParseAddrPort("198.51.100.1:5000"), JoinedAt: time.Unix(1_800_000_000+int64(i), 0)})
		require.NoError(t, err)
	}
	return call
}

// callView asks for the drill-down of call.
func (e *env) callView(t *testing.T, call protocol.ID) CallView {
	t.Helper()
	r, err := e.client.Get(e.base + "/api/call?id=" + call.String())
	require.NoError(t, err)
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.StatusCode, string(b))
	var v CallView
	require.NoError(t, json.Unmarshal(b, &v))
	return v
}

// republish publishes msgs on the call's subject every 20 ms, as a
// conductor republishes its decisions, until the test ends.
func (e *env) republish(t *testing.T, call protocol.ID, msgs ...[]byte) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, m := range msgs {
				_ = e.pub.Publish("callrelay.call."+call.String(), m)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}

func seal(t *testing.T, m interface {
	Marshal([]byte, protocol.ClusterKey) ([]byte, error)
}, k protocol.ClusterKey) []byte {
	t.Helper()
	b, err := m.Marshal(nil, k)
	require.NoError(t, err)
	return b
}

// videoDecision is the conductor's decision for call: alice splits into
// two layers, bob sends one stream; bob gets alice's high layer, carol her
// low one and none of bob's video.
func videoDecision(call, alice, bob, carol protocol.ID) *protocol.CallDecision {
	return &protocol.CallDecision{Call: call, Partition: uint16(protocol.PartitionOf(call, 8)), Epoch: 3, Seq: 18,
		At: time.UnixMilli(1_800_000_000_123).UTC(), Dominant: alice, Forward: []protocol.ID{alice, bob}, Conductor: "cond-1",
		Video: true,
		Senders: []protocol.SenderTarget{
			{Participant: alice, Layers: 2, TotalBps: 1_200_000, LayerBps: [3]uint32{200_000, 900_000}},
			{Participant: bob, Layers: 1, TotalBps: 500_000, LayerBps: [3]uint32{450_000}},
		},
		Layers: []protocol.LayerAssign{
			{Receiver: carol, Sender: bob, Rank: protocol.RankNone},
			{Receiver: carol, Sender: alice, Rank: 1},
			{Receiver: bob, Sender: alice, Rank: 2},
		},
	}
}

func TestDashboardCallVideo(t *testing.T) {
	e := start(t)
	alice, bob, carol := protocol.NewID(), protocol.NewID(), protocol.NewID()
	call := e.addCall(t, alice, bob, carol)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)

	// A forger, without the cluster key, claims bob gets nothing of alice;
	// the real conductor's decision and a member notice share the subject.
	d := videoDecision(call, alice, bob, carol)
	forged := videoDecision(call, alice, bob, carol)
	forged.Conductor, forged.Seq, forged.Layers = "cond-evil", 99, forged.Layers[:1]
	notice := &protocol.MemberNotice{Op: protocol.MemberPlaced, Call: call, Participant: alice, Forwarder: "fwd-a",
		Trunk: netip.MustParseAddrPort("10.0.0.7:7001")}
	e.republish(t, call, seal(t, forged, other), seal(t, notice, e.key), seal(t, d, e.key))

	v := e.callView(t, call).Video
	require.True(t, v.Seen, v.Note)
	require.True(t, v.Video)
	require.False(t, v.Busy)
	require.Equal(t, "cond-1", v.Conductor, "the forged decision is ignored")
	require.EqualValues(t, 3, v.Epoch)
	require.EqualValues(t, 18, v.Seq)
	require.True(t, d.At.Equal(v.At))
	require.Zero(t, v.Malformed)

	want := []SenderView{
		{Participant: alice.String(), Layers: 2, TargetKbps: 1200, LayerKbps: []float64{200, 900}},
		{Participant: bob.String(), Layers: 1, TargetKbps: 500, LayerKbps: []float64{450}},
	}
	if want[1].Participant < want[0].Participant {
		want[0], want[1] = want[1], want[0]
	}
	require.Equal(t, want, v.Senders)
	layers := map[[2]string]LayerView{}
	for _, l := range v.Layers {
		layers[[2]string{l.Receiver, l.Sender}] = l
	}
	require.Len(t, layers, 3)
	require.Equal(t, LayerView{Receiver: bob.String(), Sender: alice.String(), Rank: 2, Layer: "high"}, layers[[2]string{bob.String(), alice.String()}])
	require.Equal(t, LayerView{Receiver: carol.String(), Sender: alice.String(), Rank: 1, Layer: "low"}, layers[[2]string{carol.String(), alice.String()}])
	require.Equal(t, LayerView{Receiver: carol.String(), Sender: bob.String(), Rank: protocol.RankNone, Layer: "none"}, layers[[2]string{carol.String(), bob.String()}])
	for i := 1; i < len(v.Layers); i++ {
		require.LessOrEqual(t, v.Layers[i-1].Receiver, v.Layers[i].Receiver, "by receiver")
	}
}

func TestDashboardCallVideoForgedOnly(t *testing.T) {
	e := start(t, func(c *Config) { c.DecisionWait = 500 * time.Millisecond })
	alice, bob := protocol.NewID(), protocol.NewID()
	call := e.addCall(t, alice, bob)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	// Forged decisions, one with the right key for another call (a
	// misrouted message), and a tampered one.
	d := videoDecision(call, alice, bob, protocol.NewID())
	misrouted := videoDecision(protocol.NewID(), alice, bob, protocol.NewID())
	tampered := seal(t, d, e.key)
	tampered[20] ^= 1
	e.republish(t, call, seal(t, d, other), seal(t, misrouted, e.key), tampered)

	start := time.Now()
	v := e.callView(t, call).Video
	require.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond, "waited for an authentic decision")
	require.False(t, v.Seen)
	require.False(t, v.Busy)
	require.Empty(t, v.Senders)
	require.Empty(t, v.Layers)
	require.Empty(t, v.Conductor)
	require.Positive(t, v.Forged)
	require.Contains(t, v.Note, "no decision seen on callrelay.call."+call.String()+" within 500ms")
	require.Contains(t, v.Note, "do not authenticate with the cluster key were ignored")
}

func TestDashboardCallNoVideo(t *testing.T) {
	e := start(t)
	alice, bob := protocol.NewID(), protocol.NewID()
	call := e.addCall(t, alice, bob)
	d := &protocol.CallDecision{Call: call, Epoch: 1, Seq: 2, Dominant: bob, Forward: []protocol.ID{bob}, Conductor: "cond-2"}
	e.republish(t, call, seal(t, d, e.key))
	v := e.callView(t, call).Video
	require.True(t, v.Seen, v.Note)
	require.False(t, v.Video)
	require.Equal(t, "cond-2", v.Conductor)
	require.Contains(t, v.Note, "does not steer this call's video")
	require.Empty(t, v.Layers)
}

// TestDashboardCallVideoBound: at most MaxDecisionLookups drill-downs
// listen at once; the others get the call without its video layers, and
// the slots come back.
func TestDashboardCallVideoBound(t *testing.T) {
	e := start(t, func(c *Config) { c.MaxDecisionLookups, c.DecisionWait = 2, time.Second })
	call := e.addCall(t, protocol.NewID())

	// Two drill-downs of a call nobody decides for hold both slots.
	var wg sync.WaitGroup
	views := make([]VideoView, 2)
	for i := range views {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.client.Get(e.base + "/api/call?id=" + call.String())
			if err != nil {
				return
			}
			defer r.Body.Close()
			var v CallView
			if json.NewDecoder(r.Body).Decode(&v) == nil {
				views[i] = v.Video
			}
		}()
	}
	testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(e.srv.lookups); n != 2 {
			return fmt.Errorf("%d lookups running", n)
		}
		return nil
	})
	v := e.callView(t, call)
	require.Len(t, v.Members, 1, "the rest of the drill-down is there")
	require.True(t, v.Video.Busy)
	require.False(t, v.Video.Seen)
	require.Contains(t, v.Video.Note, "2 drill-downs are already waiting")
	wg.Wait()
	for _, v := range views {
		require.False(t, v.Busy)
		require.False(t, v.Seen)
		require.Contains(t, v.Note, "no decision seen")
	}
	testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(e.srv.lookups); n != 0 {
			return fmt.Errorf("%d lookups still running", n)
		}
		return nil
	})

	// An unknown call (404) takes a slot only while Redis answers.
	r, err := e.client.Get(e.base + "/api/call?id=" + protocol.NewID().String())
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, http.StatusNotFound, r.StatusCode)

	// The slots are free again.
	d := &protocol.CallDecision{Call: call, Epoch: 1, Seq: 1, Conductor: "cond-1", Video: true}
	e.republish(t, call, seal(t, d, e.key))
	v = e.callView(t, call)
	require.True(t, v.Video.Seen, v.Video.Note)
	require.Equal(t, "the conductor steers video but no one sends any", v.Video.Note)
	testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(e.srv.lookups); n != 0 {
			return fmt.Errorf("%d lookups still running", n)
		}
		return nil
	})
}

func TestLayerName(t *testing.T) {
	for _, tt := range []struct {
		rank   uint8
		layers int
		want   string
	}{
		{2, 1, "single stream"}, {2, 2, "high"}, {2, 3, "high"}, {2, 0, "high / single stream"},
		{1, 2, "low"}, {1, 3, "middle"}, {1, 0, "low"}, {1, 1, "none (below the sender's lowest layer)"},
		{0, 3, "lowest"}, {0, 2, "none (below the sender's lowest layer)"}, {0, 0, "lowest"},
		{protocol.RankNone, 2, "none"}, {protocol.RankNone, 0, "none"},
	} {
		require.Equal(t, tt.want, layerName(tt.rank, tt.layers), "rank %d of %d layers", tt.rank, tt.layers)
	}
}
