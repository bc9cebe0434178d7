package client

import (
	"math"

	"github.com/pion/rtcp"

	"github.com/callrelay/callrelay/protocol"
)

// VideoStats are a VideoSender's counters and its current instructions.
type VideoStats struct {
	// Layers is the number of simulcast layers being sent (1: a single
	// stream on SSRCs[0]).
	Layers int
	// TargetTotal is the total of the last TargetBitrate (0: none yet);
	// REMB the last REMB from the relay (0: none yet), bits per second.
	TargetTotal uint32
	REMB        uint32
	// SimulcastControls, TargetBitrates and REMBs count the relay's
	// instructions applied.
	SimulcastControls uint64
	TargetBitrates    uint64
	REMBs             uint64
	// PLIs counts PLI and FIR requests for one of the sender's SSRCs;
	// PLIsCoalesced those that found a key frame already pending;
	// PLIsIgnored those for a layer not being sent.
	PLIs          uint64
	PLIsCoalesced uint64
	PLIsIgnored   uint64
	// RTCPMalformed counts RTCP packets HandleRTCP could not decode
	// (broken framing, a bad CRLY body).
	RTCPMalformed uint64
	// WriteErrors counts packets the writer refused (or that failed to
	// seal).
	WriteErrors uint64
	Layer       [protocol.MaxSimulcastLayers]VideoLayerStats
}

// VideoLayerStats are one layer's counters. Packets and Bytes count RTP
// packets as sent (header, payload and SRTP tag: what targets count).
type VideoLayerStats struct {
	SSRC      uint32
	Active    bool   // being sent now
	Height    int    // picture height now, pixels (0 when not sent)
	Target    uint32 // bits per second now (0 when not sent)
	Frames    uint64
	KeyFrames uint64
	Packets   uint64
	Bytes     uint64
}

// layerWeights split a video budget over the layers when the relay gives
// no per-layer targets: roughly what each resolution needs.
var layerWeights = [protocol.MaxSimulcastLayers + 1][protocol.MaxSimulcastLayers]float64{
	1: {1},
	2: {1, 4},
	3: {1, 3, 8},
}

// videoTargets computes each layer's target, bits per second, from the
// relay's instructions (0: the layer is not sent).
func videoTargets(c *videoControl, cfg VideoConfig) [protocol.MaxSimulcastLayers]uint32 {
	n := c.layers
	audio := float64(cfg.AudioBitrate)
	budget, limit := float64(cfg.InitialBitrate), math.Inf(1)
	if c.haveTarget && c.target.Total > 0 {
		budget = max(float64(c.target.Total)-audio, 0)
		limit = budget
	}
	if c.remb > 0 {
		limit = min(limit, max(float64(c.remb)-audio, 0))
	}
	var t [protocol.MaxSimulcastLayers]float64
	var weight float64
	for _, w := range layerWeights[n] {
		weight += w
	}
	var sum float64
	for i := range n {
		if c.haveTarget && i < int(c.target.LayerCount) {
			t[i] = float64(c.target.Layers[i])
		} else {
			t[i] = budget * layerWeights[n][i] / weight
		}
		sum += t[i]
	}
	scale := 1.0
	if sum > limit {
		scale = limit / sum
	}
	var out [protocol.MaxSimulcastLayers]uint32
	for i := range n {
		out[i] = uint32(min(t[i]*scale, math.MaxUint32))
	}
	return out
}

// layerHeight is layer i's picture height with n layers: the top layer at
// full height, the lowest at a quarter, a middle one at a half.
func layerHeight(i, n, full int) int {
	switch {
	case i >= n:
		return 0
	case i == n-1:
		return full
	case i == 0:
		return full / 4
	default:
		return full / 2
	}
}

// HandleRTCP reads one RTCP datagram received from the relay (alone or
// compound) and applies what concerns this sender: SimulcastControl,
// TargetBitrate, the relay's REMB, and PLI or FIR for one of its SSRCs. It
// reports whether anything applied. Feed it every RTCP datagram from
// Media; the rest is ignored.
func (v *VideoSender) HandleRTCP(b []byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	acted := false
	bad := forEachRTCP(b, func(p rtcp.Packet) {
		if v.apply(p) {
			acted = true
		}
	})
	v.ctl.malformed += uint64(bad) //nolint:gosec // a count
	return acted
}

// apply acts on one RTCP packet. v.mu must be held.
func (v *VideoSender) apply(p rtcp.Packet) bool {
	c := &v.ctl
	switch p := p.(type) {
	case *rtcp.ApplicationDefined:
		if p.Name != protocol.RelayAppName {
			return false
		}
		m, err := protocol.DecodeRelayApp(p)
		if err != nil {
			c.malformed++
			return false
		}
		switch m := m.(type) {
		case *protocol.TargetBitrate:
			c.target, c.haveTarget = *m, true
			c.targets++
			return true
		case *protocol.SimulcastControl:
			n := 1
			if m.Enabled {
				n = int(m.Layers)
			}
			if n != c.layers {
				c.layers, c.restart = n, true
			}
			c.simulcasts++
			return true
		}
	case *rtcp.ReceiverEstimatedMaximumBitrate:
		if p.SenderSSRC != v.cfg.RelaySSRC || p.Bitrate <= 0 {
			return false // another member's, relayed; or no estimate
		}
		c.remb = uint32(min(float64(p.Bitrate), math.MaxUint32))
		c.rembs++
		return true
	case *rtcp.PictureLossIndication:
		return v.keyRequest(p.MediaSSRC)
	case *rtcp.FullIntraRequest:
		acted := false
		for _, e := range p.FIR {
			if v.keyRequest(e.SSRC) {
				acted = true
			}
		}
		return acted
	}
	return false
}

// keyRequest asks for a key frame on ssrc's layer. v.mu must be held.
func (v *VideoSender) keyRequest(ssrc uint32) bool {
	i, ok := v.LayerOf(ssrc)
	if !ok {
		return false
	}
	c := &v.ctl
	c.plis++
	if videoTargets(c, v.cfg)[i] == 0 {
		c.plisIgnored++ // not sent now: it restarts with a key frame anyway
		return false
	}
	if c.pli[i] {
		c.plisCoalesced++
	}
	c.pli[i] = true
	return true
}

// Stats returns the sender's counters and current instructions.
func (v *VideoSender) Stats() VideoStats {
	v.mu.Lock()
	c := &v.ctl
	targets := videoTargets(c, v.cfg)
	s := VideoStats{
		Layers:            c.layers,
		REMB:              c.remb,
		SimulcastControls: c.simulcasts,
		TargetBitrates:    c.targets,
		REMBs:             c.rembs,
		PLIs:              c.plis,
		PLIsCoalesced:     c.plisCoalesced,
		PLIsIgnored:       c.plisIgnored,
		RTCPMalformed:     c.malformed,
	}
	if c.haveTarget {
		s.TargetTotal = c.target.Total
	}
	v.mu.Unlock()
	s.WriteErrors = v.writeErrors.Load()
	for i, l := range v.layers {
		s.Layer[i] = VideoLayerStats{
			SSRC:      v.cfg.SSRCs[i],
			Active:    targets[i] > 0,
			Target:    targets[i],
			Frames:    l.frames.Load(),
			KeyFrames: l.keyFrames.Load(),
			Packets:   l.packets.Load(),
			Bytes:     l.bytes.Load(),
		}
		if targets[i] > 0 {
			s.Layer[i].Height = layerHeight(i, s.Layers, v.cfg.Height)
		}
	}
	return s
}
