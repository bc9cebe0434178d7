package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// CallView is one call's drill-down.
type CallView struct {
	ID        string       `json:"id"`
	Class     string       `json:"class"`
	MaxSize   int          `json:"maxSize"`
	Version   uint64       `json:"version"`
	Partition int          `json:"partition"`
	Conductor string       `json:"conductor"` // the partition's holder, "" if unowned or unknown
	Members   []MemberView `json:"members"`
	// AddrsHidden: the members' device addresses are left out (Addr "")
	// because the request did not carry the admin token.
	AddrsHidden bool        `json:"addrsHidden"`
	Speaker     SpeakerView `json:"speaker"`
	Video       VideoView   `json:"video"`
	// Timeline is the conductor's decision events for the call (speaker
	// switches, layer switches and cuts; conductors.go), oldest first.
	Timeline []protocol.AdminEvent `json:"timeline"`
}

// MemberView is one member of a call.
type MemberView struct {
	Participant string    `json:"participant"`
	Forwarder   string    `json:"forwarder"`
	ForwarderUp bool      `json:"forwarderUp"`
	Addr        string    `json:"addr"` // the device's ip:port; "" unless the admin token was shown
	Trunk       string    `json:"trunk"`
	JoinedAt    time.Time `json:"joinedAt"`
	Streams     int       `json:"streams"`
	Dominant    bool      `json:"dominant"`
	LastSpoke   time.Time `json:"lastSpoke,omitzero"`
}

// SpeakerView is what the conductor's last checkpoint says.
type SpeakerView struct {
	Known    bool      `json:"known"`
	Note     string    `json:"note,omitempty"`
	Dominant string    `json:"dominant,omitempty"` // "" for nobody yet
	Since    time.Time `json:"since,omitzero"`
	Epoch    uint32    `json:"epoch"`
	Seq      uint32    `json:"seq"`
}

func (s *Server) handleCall(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimSpace(r.URL.Query().Get("id"))
	id, err := parseCallID(raw)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	if s.cfg.Store == nil {
		s.fail(w, http.StatusServiceUnavailable, "no state store configured: start the dashboard with --redis-url", nil)
		return
	}
	// Listen for the conductor's decision while Redis is read.
	waitUntil := time.Now().Add(s.cfg.DecisionWait)
	look := s.startLookup(id)
	defer look.close()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	v, err := s.callView(ctx, id)
	switch {
	case errors.Is(err, statestore.ErrNotFound):
		s.fail(w, http.StatusNotFound, fmt.Sprintf("call %s not found: it has ended, or never existed", id), nil)
	case errors.Is(err, statestore.ErrCorrupt):
		s.malformed.call.Add(1)
		s.fail(w, http.StatusBadGateway, fmt.Sprintf("call %s: its record in Redis is malformed: %v", id, err), err)
	case err != nil:
		s.fail(w, http.StatusServiceUnavailable, "cannot read the call from Redis: "+err.Error(), err)
	default:
		wctx, wcancel := context.WithDeadline(r.Context(), waitUntil)
		defer wcancel()
		v.Video = look.wait(wctx)
		if roleIn(r.Context()) < roleAdmin {
			v.hideAddrs()
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// hideAddrs leaves the device addresses out: what aims a spoofed
// instruction (MigrateTo, Rejoin) at a device.
func (v *CallView) hideAddrs() {
	for i := range v.Members {
		v.Members[i].Addr = ""
	}
	v.AddrsHidden = true
}

// parseCallID accepts exactly 32 hex digits (a pasted id's spaces and
// dashes aside).
func parseCallID(raw string) (protocol.ID, error) {
	if raw == "" {
		return protocol.ID{}, errors.New("missing call id: use /api/call?id=<32 hex digits>")
	}
	h := strings.ReplaceAll(raw, "-", "")
	if len(h) != 32 || strings.Trim(h, "0123456789abcdefABCDEF") != "" {
		return protocol.ID{}, fmt.Errorf("call id %q: want 32 hex digits", truncate(raw, 80))
	}
	id, err := protocol.ParseID(h)
	if err != nil || id.IsZero() {
		return protocol.ID{}, fmt.Errorf("call id %q: want 32 hex digits, not all zero", truncate(raw, 80))
	}
	return id, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (s *Server) callView(ctx context.Context, id protocol.ID) (CallView, error) {
	c, err := s.cfg.Store.Get(ctx, id)
	if err != nil {
		return CallView{}, err
	}
	v := CallView{ID: id.String(), Class: c.Class.String(), MaxSize: c.MaxSize, Version: c.Version,
		Partition: protocol.PartitionOf(id, s.cfg.Partitions), Members: []MemberView{}, Timeline: s.cond.timeline(id)}
	if v.Timeline == nil {
		v.Timeline = []protocol.AdminEvent{}
	}
	s.mu.Lock()
	if p := s.parts; p.Checked && p.Error == "" && v.Partition < len(p.Owner) && p.Owner[v.Partition] >= 0 {
		v.Conductor = p.Owners[p.Owner[v.Partition]].Owner
	}
	s.mu.Unlock()
	fwds, _ := s.fwd.view(s.cfg.Now(), s.cfg.DownAfter, s.cfg.ForgetAfter)
	up := map[string]bool{}
	for _, f := range fwds {
		up[f.ID] = f.Up
	}
	var st statestore.SpeakerState
	v.Speaker, st = s.speaker(ctx, id)
	for p, m := range c.Members {
		mv := MemberView{Participant: p.String(), Forwarder: m.Forwarder, ForwarderUp: up[m.Forwarder],
			Addr: m.Addr.String(), Trunk: m.Trunk.String(), JoinedAt: m.JoinedAt, Streams: len(m.SSRCs),
			Dominant: v.Speaker.Known && p == st.Dominant, LastSpoke: st.LastSpoke[p]}
		v.Members = append(v.Members, mv)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].JoinedAt.Before(v.Members[j].JoinedAt) })
	return v, nil
}

// speaker reads the conductor's checkpoint (statestore.ConductorCheckpoint,
// the conductor's own layout). One that does not decode is counted and
// said in the view's note; the members are shown all the same.
func (s *Server) speaker(ctx context.Context, id protocol.ID) (SpeakerView, statestore.SpeakerState) {
	var ck statestore.ConductorCheckpoint
	b, err := s.cfg.Store.LoadCheckpoint(ctx, id, statestore.ConductorCheckpointKind)
	if err == nil {
		err = ck.UnmarshalBinary(b)
	}
	switch {
	case errors.Is(err, statestore.ErrNotFound):
		return SpeakerView{Note: "no conductor checkpoint yet (saved every few seconds while the call changes)"}, ck.Speaker
	case errors.Is(err, statestore.ErrCorrupt):
		s.malformed.checkpoint.Add(1)
		return SpeakerView{Note: "malformed conductor checkpoint: " + err.Error()}, ck.Speaker
	case err != nil:
		return SpeakerView{Note: "cannot read the conductor checkpoint: " + err.Error()}, ck.Speaker
	}
	st := ck.Speaker
	v := SpeakerView{Known: true, Epoch: ck.Epoch, Seq: ck.Seq, Since: st.Since}
	if !st.Dominant.IsZero() {
		v.Dominant = st.Dominant.String()
	} else {
		v.Note = "no dominant speaker yet"
	}
	return v, st
}
