package forwarder

import "sync/atomic"

// Per-receiver retransmission accounting: what one receiver's NACKs may
// cost. Everything is the receiver's own, so one receiver's NACKs can never
// use up another's recovery:
//
//   - its share: every byte of media sent to it earns it shareQ10/1024
//     bytes of retransmission (AdaptConfig.NackShare, a quarter by
//     default), kept up to rtxCreditMax; a resend spends it. Whatever a
//     receiver claims (a REMB of 10 Gbit/s, NACKs for every packet), the
//     bytes resent to it never exceed that share of the bytes forwarded to
//     it;
//   - its leg's budget: a token bucket at what its own estimate leaves over
//     its media (downlink.rtxAllow, 100 ms of burst), so retransmissions
//     never overfill the leg; it can only lower the share, never raise it;
//   - its packets: each packet is resent to it at most nackMaxResends
//     times, NackResendGap apart (a table of the packets resent to it
//     lately, rtxSlots of them, indexed by a hash of stream and sequence).
//
// Owned by the reader serving the receiver's flow (its NACKs arrive
// there), with atomics so that a reader taking over after an address
// change does not race the one before it.
type rtxAccount struct {
	budget   tokenBucket   // the leg's estimate
	credit   atomic.Int64  // bytes of retransmission earned and not spent
	credited atomic.Uint64 // media bytes (sent less resent) credited so far
	seen     [rtxSlots]rtxSlot
}

const (
	rtxSlots     = 256       // packets remembered per receiver (a power of two)
	rtxCreditMax = 512 << 10 // bytes of credit a receiver may save up
	rtxForgetNS  = 10e9      // a remembered resend this old is forgotten (the cache holds seconds)
)

// rtxSlot is one packet resent to the receiver: id is 1<<63 | resends<<48
// | ssrc<<16 | seq (0: empty), at the unix ns of its last resend.
type rtxSlot struct {
	id atomic.Uint64
	at atomic.Int64
}

const rtxResendsMask = 0xff << 48

func rtxID(ssrc uint32, seq uint16) uint64 { return 1<<63 | uint64(ssrc)<<16 | uint64(seq) }

func (a *rtxAccount) slot(ssrc uint32, seq uint16) *rtxSlot {
	return &a.seen[(uint32(seq)^(ssrc*0x9E3779B1)>>24)&(rtxSlots-1)]
}

// resends is how often (ssrc, seq) was resent to the receiver lately, and
// when last.
func (a *rtxAccount) resends(ssrc uint32, seq uint16, nowNS int64) (n uint64, atNS int64) {
	sl := a.slot(ssrc, seq)
	v, at := sl.id.Load(), sl.at.Load()
	if v&^rtxResendsMask != rtxID(ssrc, seq) || nowNS-at > rtxForgetNS {
		return 0, 0 // never, or another packet took the slot since
	}
	return v & rtxResendsMask >> 48, at
}

// mayResend says whether (ssrc, seq) may be resent to the receiver now:
// fewer than nackMaxResends times so far, the last gapNS ago or more.
func (a *rtxAccount) mayResend(ssrc uint32, seq uint16, nowNS, gapNS int64) bool {
	n, at := a.resends(ssrc, seq, nowNS)
	return n == 0 || (n < nackMaxResends && nowNS-at >= gapNS)
}

// noteResent remembers one more resend of (ssrc, seq) to the receiver.
func (a *rtxAccount) noteResent(ssrc uint32, seq uint16, nowNS int64) {
	n, _ := a.resends(ssrc, seq, nowNS)
	sl := a.slot(ssrc, seq)
	sl.id.Store(rtxID(ssrc, seq) | (n+1)<<48)
	sl.at.Store(nowNS)
}

// rtxTake takes n bytes of retransmission for the receiver: from its
// share of what it was sent (shareQ10 0: no share bound), then from its
// leg's budget. It says which one refused, if one did.
func (d *downlink) rtxTake(n int, nowNS, shareQ10 int64) nackOutcome {
	a := &d.rtx
	need := int64(n)
	credit := a.credit.Load()
	if shareQ10 > 0 {
		media := d.sent.Load() - d.resent.Load()
		if seen := a.credited.Load(); media > seen {
			credit = min(credit+int64(media-seen)*shareQ10>>10, rtxCreditMax)
			a.credited.Store(media)
		}
		if credit < need {
			a.credit.Store(credit)
			return nackShare
		}
	}
	rate := int64(min(d.rtxAllow.Load()/8, maxPoliceRate)) // bytes per second
	burst := max(rate/10, 3*maxDatagram)                   // 100 ms of budget
	tokens := a.budget.refill(rate, burst, nowNS)
	if tokens < need {
		a.budget.tokens.Store(tokens)
		a.credit.Store(credit)
		return nackBudget
	}
	a.budget.tokens.Store(tokens - need)
	if shareQ10 > 0 {
		credit -= need
	}
	a.credit.Store(credit)
	return nackSent
}
