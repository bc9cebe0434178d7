package client

import (
	"fmt"
	"sync"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/callrelay/callrelay/protocol"
)

// ReceiverConfig configures a Receiver. The zero value takes the defaults.
type ReceiverConfig struct {
	// ROCID is the RFC 8285 one-byte extension id in which senders carry
	// their rollover counter (protocol/README.md 4). Default
	// protocol.DefaultRolloverCounterExtensionID (4).
	ROCID uint8
}

// ReceiverStats counts how a Receiver found its streams' rollover
// counters. Packets that authenticate with the Receiver's own estimate
// (every packet of a stream in sync) are not counted.
type ReceiverStats struct {
	// ROCFromHint counts packets that authenticated only with the ROC their
	// sender carried, after the Receiver's estimate failed: a stream
	// resumed after more than half a sequence cycle (a simulcast layer
	// switched back to, say). The first packet of a stream, which takes
	// the hint without an estimate, is counted in FirstROC.
	ROCFromHint uint64
	// FirstROC counts streams whose first packet authenticated with a
	// non-zero ROC from its hint: joined (or switched to) after the
	// sender's sequence number rolled over.
	FirstROC uint64
	// ROCHintsRejected counts packets whose ROC hint differed from the
	// estimate and that authenticated with neither: tampered, forged or
	// corrupted. The stream's state is left as it was.
	ROCHintsRejected uint64
}

// Receiver decrypts the media of the senders whose keys it was given, with
// one SRTP context (and replay window) per sender SSRC. It is safe for
// concurrent use.
//
// A receiver that joins a call late, or first gets a simulcast layer after
// it rolled over, cannot know how often the sender's 16-bit sequence
// number wrapped (the ROC of RFC 3711 3.3.1), which SRTP needs to decrypt.
// Every packet carries its ROC in clear in the rollover counter extension;
// the Receiver tries at most two ROCs per packet and the auth tag decides
// (protocol/README.md 4): its own estimate from the newest packet it
// authenticated (RFC 3711 3.3.1), and the packet's hint when that differs.
// A stream's first packet tries the hint (0 without one). A forged hint
// costs one failed trial and changes nothing.
type Receiver struct {
	mu      sync.Mutex
	rocID   uint8
	senders map[uint32]*inStream
	stats   ReceiverStats
}

// inStream is one sender SSRC's SRTP state in a Receiver.
type inStream struct {
	ctx *srtp.Context
	// top is the SRTP index (ROC<<16 | sequence number) of the newest
	// packet authenticated, valid once synced.
	top    uint64
	synced bool
}

// NewReceiver returns a Receiver with the default configuration that
// knows no sender yet.
func NewReceiver() *Receiver {
	r, _ := NewReceiverWithConfig(ReceiverConfig{}) // the defaults are valid
	return r
}

// NewReceiverWithConfig returns a Receiver for cfg that knows no sender
// yet. It fails when cfg.ROCID is out of 1..14.
func NewReceiverWithConfig(cfg ReceiverConfig) (*Receiver, error) {
	if cfg.ROCID == 0 {
		cfg.ROCID = protocol.DefaultRolloverCounterExtensionID
	}
	if cfg.ROCID > 14 {
		return nil, fmt.Errorf("%w: rollover counter extension id %d: want 1..14 (RFC 8285 one-byte form)", ErrConfig, cfg.ROCID)
	}
	return &Receiver{rocID: cfg.ROCID, senders: make(map[uint32]*inStream)}, nil
}

// AddSender installs the key of the stream ssrc (learnt out of band). Adding
// an SSRC again replaces its key and restarts its replay window and its
// rollover counter (re-keying).
func (r *Receiver) AddSender(ssrc uint32, k MediaKey) error {
	ctx, err := k.context(srtp.SRTPReplayProtection(replayWindow))
	if err != nil {
		return fmt.Errorf("client: SRTP context for SSRC %d: %w", ssrc, err)
	}
	r.mu.Lock()
	r.senders[ssrc] = &inStream{ctx: ctx}
	r.mu.Unlock()
	return nil
}

// RemoveSender forgets the stream ssrc (the participant left).
func (r *Receiver) RemoveSender(ssrc uint32) {
	r.mu.Lock()
	delete(r.senders, ssrc)
	r.mu.Unlock()
}

// Stats returns the Receiver's counters.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Open authenticates and decrypts an SRTP packet. It fills hdr (which the
// caller owns and may reuse; its extension payloads point into pkt) and
// returns the plaintext payload, a sub-slice of dst when dst has room for
// the packet (else of a new buffer). A packet from an SSRC without a key
// fails with ErrUnknownSSRC; a tampered, wrongly keyed or replayed one, or
// one whose rollover counter neither the estimate nor its hint gives, with
// ErrDecrypt. Opening a packet of a stream in sync allocates nothing.
func (r *Receiver) Open(dst, pkt []byte, hdr *rtp.Header) ([]byte, error) {
	if hdr == nil {
		hdr = new(rtp.Header)
	}
	hl, err := hdr.Unmarshal(pkt)
	if err != nil {
		return nil, fmt.Errorf("%w: not an RTP packet: %w", ErrDecrypt, err)
	}
	r.mu.Lock()
	st := r.senders[hdr.SSRC]
	if st == nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w %d", ErrUnknownSSRC, hdr.SSRC)
	}
	out, err := r.decrypt(st, dst, pkt, hdr)
	r.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: SSRC %d seq %d: %w", ErrDecrypt, hdr.SSRC, hdr.SequenceNumber, err)
	}
	payload := out[hl:]
	if hdr.Padding {
		if len(payload) == 0 || payload[len(payload)-1] == 0 || int(payload[len(payload)-1]) > len(payload) {
			return nil, fmt.Errorf("%w: SSRC %d: bad padding", ErrDecrypt, hdr.SSRC)
		}
		payload = payload[:len(payload)-int(payload[len(payload)-1])]
	}
	return payload, nil
}

// decrypt tries the packet's candidate ROCs, at most two: the estimate
// (the hint, or 0, for a stream's first packet), then the hint if it
// differs. Called with r.mu held.
func (r *Receiver) decrypt(st *inStream, dst, pkt []byte, hdr *rtp.Header) ([]byte, error) {
	hint, hinted := protocol.ParseRolloverCounter(hdr.GetExtension(r.rocID))
	var est uint32
	switch {
	case st.synced:
		est = estimateROC(st.top, hdr.SequenceNumber)
	case hinted:
		est = hint
	}
	first := !st.synced
	out, err := st.open(dst, pkt, hdr, est)
	if err == nil {
		if first && est != 0 {
			r.stats.FirstROC++
		}
		return out, nil
	}
	if !hinted || hint == est {
		return nil, err
	}
	out, herr := st.open(dst, pkt, hdr, hint)
	if herr != nil {
		r.stats.ROCHintsRejected++
		return nil, err
	}
	r.stats.ROCFromHint++
	return out, nil
}

// open decrypts pkt as if its ROC were roc, and on success moves the
// stream's newest index forward. A failure leaves the stream as it was:
// the ROC pion keeps is set anew before every packet, and its replay
// window only records packets that authenticated.
func (s *inStream) open(dst, pkt []byte, hdr *rtp.Header, roc uint32) ([]byte, error) {
	s.ctx.SetROC(hdr.SSRC, roc)
	out, err := s.ctx.DecryptRTP(dst[:0], pkt, hdr)
	if err != nil {
		return nil, err
	}
	if idx := uint64(roc)<<16 | uint64(hdr.SequenceNumber); !s.synced || idx > s.top {
		s.top = idx
	}
	s.synced = true
	return out, nil
}

// estimateROC returns the ROC that puts sequence number seq nearest to the
// SRTP index top of the newest packet authenticated (RFC 3711 3.3.1 and
// its Appendix A): the same ROC, the one before when seq lies more than
// half a cycle above top's sequence number (a late packet from before the
// wrap; never below 0), or the one after when it lies more than half a
// cycle below (the sequence number wrapped).
func estimateROC(top uint64, seq uint16) uint32 {
	const half = 1 << 15
	roc, last := uint32(top>>16), uint16(top) //nolint:gosec // the index is ROC<<16 | seq
	switch {
	case last < half && seq > last && seq-last > half && roc > 0:
		return roc - 1
	case last >= half && last-half > seq:
		return roc + 1
	default:
		return roc
	}
}
