package demo

import (
	"fmt"
	"strings"
	"time"

	"github.com/callrelay/callrelay/forwarder"
)

// VideoResult is the group calls' video, summed over the devices.
type VideoResult struct {
	// Senders is the number of cameras; Layers each one's simulcast layer
	// count at the end (1: one stream).
	Senders int
	Layers  []int
	// PacketsSent, BytesSent and KeyFrames are what the cameras sent, all
	// layers (RTP packets as sent, SRTP tag included).
	PacketsSent, BytesSent, KeyFrames uint64
	// Decrypted counts video packets subscribers decrypted whose plaintext
	// named the layer of the SSRC it came on; Bytes their size as
	// received; Failed those that did not decrypt or named another layer
	// (also counted in Result.Failed).
	Decrypted, Bytes, Failed uint64
	// Instructions counts RTCP datagrams from the relay that the cameras
	// acted on (SimulcastControl, TargetBitrate, REMB, PLI); PLIs, REMBs
	// and Targets count those kinds.
	Instructions, PLIs, REMBs, Targets uint64
}

// FeedbackResult is what the devices' client Feedback did, summed.
type FeedbackResult struct {
	// Reports counts RR+REMB compounds sent, NACKs NACK packets, PLIs the
	// PLIs; Duplicates the received packets dropped as duplicates.
	Reports, NACKs, PLIs, Duplicates uint64
	// VideoNACKed counts video packets found missing and NACKed (not
	// merely reordered); of them VideoRecovered arrived after a NACK and
	// VideoLost were given up. A receiver cannot tell loss from a gap the
	// relay made on purpose, so these include the gaps of a layer it
	// stopped and resumed forwarding to the receiver. AudioRecovered is
	// the audio's recovered packets; audio's given-up count is left out,
	// as the audio the conductor holds back makes gaps all the time.
	VideoNACKed, VideoRecovered, VideoLost uint64
	AudioRecovered                         uint64
}

// LossResult is what the simulated loss (Config.LossyPercent) did to its
// participant, and what NACK got back.
type LossResult struct {
	Participant uint32 // its audio SSRC, as the demo numbers participants
	Percent     float64
	lossStats
}

// tally is a snapshot of the devices' video and feedback counters.
type tally struct {
	at    time.Time
	video VideoResult
	fb    FeedbackResult
}

// tallyOf reads the counters of members.
func tallyOf(members []*participant, now time.Time) tally {
	t := tally{at: now}
	v, f := &t.video, &t.fb
	for _, m := range members {
		if cam := m.video.Load(); cam != nil {
			st := cam.Stats()
			v.Senders++
			v.Layers = append(v.Layers, st.Layers)
			for _, l := range st.Layer {
				v.PacketsSent += l.Packets
				v.BytesSent += l.Bytes
				v.KeyFrames += l.KeyFrames
			}
			v.PLIs += st.PLIs
			v.REMBs += st.REMBs
			v.Targets += st.TargetBitrates
		}
		v.Decrypted += m.videoDecrypted.Load()
		v.Bytes += m.videoBytes.Load()
		v.Failed += m.videoFailed.Load()
		v.Instructions += m.videoInstructions.Load()
		fs := m.fb.Stats()
		f.Reports += fs.Reports
		f.NACKs += fs.NACKs
		f.PLIs += fs.PLIs
		for _, s := range fs.Streams {
			f.Duplicates += s.Duplicates
			if s.Video {
				f.VideoNACKed += s.Missing - s.Reordered
				f.VideoRecovered += s.Recovered
				f.VideoLost += s.Unrecovered
			} else {
				f.AudioRecovered += s.Recovered
			}
		}
	}
	return t
}

// videoLines is the demo's video and feedback summary: counts since the
// start, rates since prev.
func videoLines(prev, cur tally, fwd forwarder.Stats, loss *LossResult) []string {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(b, a uint64) float64 {
		if secs <= 0 || b < a {
			return 0
		}
		return float64(b-a) * 8 / secs / 1e6
	}
	v, f := cur.video, cur.fb
	layers := make([]string, len(v.Layers))
	for i, n := range v.Layers {
		layers[i] = fmt.Sprint(n)
	}
	lines := []string{
		fmt.Sprintf("video: %d senders, layers %s, sent %.2f Mbit/s, received %.2f Mbit/s, %d key frames, decrypted %d  failed %d",
			v.Senders, strings.Join(layers, "/"), rate(v.BytesSent, prev.video.BytesSent), rate(v.Bytes, prev.video.Bytes),
			v.KeyFrames, v.Decrypted, v.Failed),
		fmt.Sprintf("feedback: %d RR+REMB, %d NACK and %d PLI packets sent, %d duplicates dropped; video NACKed %d recovered %d given up %d, audio recovered %d",
			f.Reports, f.NACKs, f.PLIs, f.Duplicates, f.VideoNACKed, f.VideoRecovered, f.VideoLost, f.AudioRecovered),
		fmt.Sprintf("relay: resent %d of %d packets NACKed (not cached %d, resent enough %d, over budget %d), %d key frames asked, %d subscriptions applied, %d targets and REMBs sent, %d downlink probes",
			fwd.NackOutcomes[0], fwd.Nacked, fwd.NackOutcomes[1], fwd.NackOutcomes[2], fwd.NackOutcomes[3],
			fwd.KeyFramesAsked, fwd.Subscriptions, fwd.TargetsSent, fwd.Probes),
	}
	if v.Senders == 0 {
		lines[0] = "video: none (audio only)"
	}
	if loss != nil {
		lines = append(lines, fmt.Sprintf("lossy: participant %d dropped %d packets (%d distinct, %.1f%%, simulated in its client before its feedback), recovered %d by NACK, lost %d, %d pending",
			loss.Participant, loss.Drops, loss.Dropped, loss.Percent, loss.Recovered, loss.Lost, loss.Pending))
	}
	return lines
}
