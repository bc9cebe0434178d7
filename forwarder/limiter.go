package forwarder

import "net/netip"

// stunLimiter bounds the join/keepalive requests each source may make, before
// they reach the (expensive) control path. One per reader, so no lock; a
// fixed table of token buckets indexed by a hash of the source, so no
// allocation and bounded memory whatever a flood looks like. Two sources
// sharing a bucket share a budget; the budget is far above what a device
// needs (one keepalive a second and a few join retransmissions).
type stunLimiter struct {
	rate, burst float64 // tokens per nanosecond, bucket size
	buckets     [1024]bucket
}

// bucket is one token bucket of requests. It holds no rate of its own:
// the stunLimiter's, a session's address changes (control.go) and the
// forwarder's address checks use it with theirs.
type bucket struct {
	tokens float64
	last   int64 // ns
}

func newSTUNLimiter(perSecond, burst float64) stunLimiter {
	return stunLimiter{rate: perSecond / 1e9, burst: burst}
}

// allow spends a token of the bucket of key (a hash of the source).
func (l *stunLimiter) allow(key uint32, nowNS int64) bool {
	return l.buckets[key%uint32(len(l.buckets))].take(l.rate, l.burst, nowNS)
}

// take spends a token, refilled at rate per nanosecond up to burst; a new
// bucket starts full.
func (b *bucket) take(rate, burst float64, nowNS int64) bool {
	if b.last == 0 {
		b.tokens = burst
	} else {
		b.tokens += float64(nowNS-b.last) * rate
		if b.tokens > burst {
			b.tokens = burst
		}
	}
	b.last = nowNS
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// hashAddr is FNV-1a over the address.
func hashAddr(addr netip.Addr) uint32 {
	a := addr.As16()
	h := uint32(2166136261)
	for _, c := range a {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// hashAddrPort is FNV-1a over the address and port.
func hashAddrPort(ap netip.AddrPort) uint32 {
	h := hashAddr(ap.Addr())
	p := ap.Port()
	h = (h ^ uint32(p>>8)) * 16777619
	h = (h ^ uint32(p&0xff)) * 16777619
	return h
}
