package dashboard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callrelay/callrelay/protocol"
)

// A call's drill-down shows how its video flows: the conductor's latest
// CallDecision, taken from the call's NATS subject. The dashboard keeps no
// decisions; each drill-down listens on <prefix>.call.<call id> for up to
// DecisionWait (conductors republish at least every second), at most
// MaxDecisionLookups drill-downs at once.

// Bounds on what one lookup buffers: the subject also carries the
// call's MemberNotices; a decision is at most 64 KiB.
const (
	lookupPendingMsgs  = 32
	lookupPendingBytes = lookupPendingMsgs * (65535 + 24)
)

// VideoView is how video flows in a call, as the conductor decided it.
type VideoView struct {
	// Seen: an authentic decision for the call arrived within the wait.
	Seen bool `json:"seen"`
	// Busy: too many drill-downs were waiting for decisions; not looked up.
	Busy bool `json:"busy"`
	// Video: the decision steers video (it has the video section).
	Video bool `json:"video"`
	// Note says why the view is empty, or what it means.
	Note string `json:"note,omitempty"`
	// Forged and Malformed count the decisions on the call's subject that
	// did not authenticate with the cluster key, or did not parse: ignored.
	Forged    int `json:"forged"`
	Malformed int `json:"malformed"`
	// The decision shown.
	Conductor string    `json:"conductor,omitempty"`
	Epoch     uint32    `json:"epoch,omitempty"`
	Seq       uint32    `json:"seq,omitempty"`
	At        time.Time `json:"at,omitzero"`
	// Senders are the video senders' uplink plans, Layers who gets whose
	// video, by receiver then sender. A pair not listed is left to the
	// forwarder's own policy.
	Senders []SenderView `json:"senders"`
	Layers  []LayerView  `json:"layers"`
}

// SenderView is one video sender's plan.
type SenderView struct {
	Participant string `json:"participant"`
	// Layers is 1 for one stream, 2 or 3 for a simulcast split.
	Layers int `json:"layers"`
	// TargetKbps is the whole uplink target, audio included.
	TargetKbps float64 `json:"targetKbps"`
	// LayerKbps are the per-layer targets, lowest first (Layers of them);
	// 0: do not send the layer.
	LayerKbps []float64 `json:"layerKbps"`
}

// LayerView is the video one receiver gets from one sender.
type LayerView struct {
	Receiver string `json:"receiver"`
	Sender   string `json:"sender"`
	// Rank is the highest quality rank the receiver may get, 0..2, or 255:
	// none.
	Rank uint8 `json:"rank"`
	// Layer names it: "high", "single stream", "low", "none", ...
	Layer string `json:"layer"`
}

// decisionLookup is one drill-down's listening on a call's subject. It
// subscribes before the call is read from Redis, so decisions published
// meanwhile are kept.
type decisionLookup struct {
	s       *Server
	call    protocol.ID
	subject string
	sub     *nats.Subscription // nil: not looked up, view says why
	view    VideoView
}

// startLookup takes a lookup slot and subscribes to the call's subject;
// close releases both.
func (s *Server) startLookup(call protocol.ID) *decisionLookup {
	l := &decisionLookup{s: s, call: call, subject: protocol.CallSubject(s.cfg.Subject, call)}
	select {
	case s.lookups <- struct{}{}:
	default:
		l.view = noVideo(fmt.Sprintf("video layers not looked up: %d drill-downs are already waiting for decisions; try again in a moment",
			s.cfg.MaxDecisionLookups))
		l.view.Busy = true
		return l
	}
	sub, err := s.cfg.NATS.SubscribeSync(l.subject)
	if err == nil {
		err = sub.SetPendingLimits(lookupPendingMsgs, lookupPendingBytes)
		if err != nil {
			_ = sub.Unsubscribe()
		}
	}
	if err != nil {
		<-s.lookups
		l.view = noVideo(fmt.Sprintf("cannot listen on %s for the conductor's decisions: %v", l.subject, err))
		return l
	}
	l.sub = sub
	return l
}

func (l *decisionLookup) close() {
	if l.sub != nil {
		_ = l.sub.Unsubscribe()
		l.sub = nil
		<-l.s.lookups
	}
}

// wait returns the first authentic decision for the call that arrives
// before ctx ends. MemberNotices share the subject and are skipped.
func (l *decisionLookup) wait(ctx context.Context) VideoView {
	if l.sub == nil {
		return l.view
	}
	var d protocol.CallDecision
	var forged, malformed int
	for {
		m, err := l.sub.NextMsgWithContext(ctx)
		if err != nil && ctx.Err() == nil {
			v := noVideo(fmt.Sprintf("stopped listening on %s for the conductor's decisions: %v", l.subject, err))
			v.Forged, v.Malformed = forged, malformed
			return v
		}
		if err != nil {
			v := noVideo(fmt.Sprintf("no decision seen on %s within %v: no conductor owns the call's partition, or it is not deciding",
				l.subject, l.s.cfg.DecisionWait))
			v.Forged, v.Malformed = forged, malformed
			if forged > 0 {
				v.Note += fmt.Sprintf("; %d decision(s) that do not authenticate with the cluster key were ignored", forged)
			}
			return v
		}
		if t, err := protocol.PeekClusterMsgType(m.Data); err != nil || t != protocol.ClusterMsgDecision {
			continue
		}
		switch err := d.Unmarshal(m.Data, l.s.cfg.Key); {
		case errors.Is(err, protocol.ErrClusterMsgAuth):
			forged++
		case err != nil:
			malformed++
		case d.Call == l.call:
			v := videoView(&d)
			v.Forged, v.Malformed = forged, malformed
			return v
		}
	}
}

// noVideo is a view without a decision (empty lists, not null, in JSON).
func noVideo(note string) VideoView {
	return VideoView{Note: note, Senders: []SenderView{}, Layers: []LayerView{}}
}

// videoView shows an authentic decision.
func videoView(d *protocol.CallDecision) VideoView {
	v := VideoView{Seen: true, Video: d.Video, Conductor: d.Conductor, Epoch: d.Epoch, Seq: d.Seq, At: d.At,
		Senders: make([]SenderView, 0, len(d.Senders)), Layers: make([]LayerView, 0, len(d.Layers))}
	if !d.Video {
		v.Note = "the conductor does not steer this call's video: the forwarders apply their own policy"
		return v
	}
	layers := make(map[protocol.ID]int, len(d.Senders))
	for _, t := range d.Senders {
		layers[t.Participant] = int(t.Layers)
		sv := SenderView{Participant: t.Participant.String(), Layers: int(t.Layers), TargetKbps: float64(t.TotalBps) / 1000}
		for _, bps := range t.LayerBps[:t.Layers] {
			sv.LayerKbps = append(sv.LayerKbps, float64(bps)/1000)
		}
		v.Senders = append(v.Senders, sv)
	}
	slices.SortFunc(v.Senders, func(a, b SenderView) int { return cmp.Compare(a.Participant, b.Participant) })
	for _, a := range d.Layers {
		v.Layers = append(v.Layers, LayerView{Receiver: a.Receiver.String(), Sender: a.Sender.String(), Rank: a.Rank,
			Layer: layerName(a.Rank, layers[a.Sender])})
	}
	slices.SortFunc(v.Layers, func(a, b LayerView) int {
		return cmp.Or(cmp.Compare(a.Receiver, b.Receiver), cmp.Compare(a.Sender, b.Sender))
	})
	if len(v.Senders) == 0 && len(v.Layers) == 0 {
		v.Note = "the conductor steers video but no one sends any"
	}
	return v
}

// layerName names the layer a rank gets from a sender planned to send
// layers layers (0: no plan for it). Ranks count down from the sender's
// best layer, 2 (protocol README section 4).
func layerName(rank uint8, layers int) string {
	switch {
	case rank == protocol.RankNone:
		return "none"
	case layers > 0 && int(rank) < protocol.MaxSimulcastLayers-layers:
		return "none (below the sender's lowest layer)"
	case rank == 2 && layers == 1:
		return "single stream"
	case rank == 2 && layers > 1:
		return "high"
	case rank == 2:
		return "high / single stream"
	case rank == 1 && layers == 3:
		return "middle"
	case rank == 1:
		return "low"
	}
	return "lowest"
}
