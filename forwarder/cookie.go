package forwarder

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// cookieJar issues and checks return-routability cookies. A join, an
// address change and a leave are honoured only when the request echoes a
// cookie issued for its exact source address, so a spoofed source address
// cannot be joined to a call (and made the target of its media), moved
// into, or used to end someone's session. The cookie is stateless: an HMAC
// of the address and a time bucket under a secret that lives only in this
// process, checked before any signature verification.
type cookieJar struct {
	secret [32]byte
}

const (
	cookieBucket = 30 * time.Second // a cookie lives one to two buckets
	cookieSize   = 16
)

func newCookieJar() *cookieJar {
	j := &cookieJar{}
	if _, err := rand.Read(j.secret[:]); err != nil {
		panic("forwarder: crypto/rand failed: " + err.Error())
	}
	return j
}

func (j *cookieJar) make(src netip.AddrPort, bucket int64) []byte {
	m := hmac.New(sha256.New, j.secret[:])
	var b [8 + 16 + 2]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(bucket))
	a := src.Addr().As16()
	copy(b[8:24], a[:])
	binary.BigEndian.PutUint16(b[24:26], src.Port())
	m.Write(b[:])
	return m.Sum(nil)[:cookieSize]
}

// issue returns the cookie for src now.
func (j *cookieJar) issue(src netip.AddrPort, now time.Time) []byte {
	return j.make(src, now.Unix()/int64(cookieBucket/time.Second))
}

// valid accepts a cookie issued for src in this bucket or the previous one.
func (j *cookieJar) valid(cookie []byte, src netip.AddrPort, now time.Time) bool {
	if len(cookie) != cookieSize {
		return false
	}
	b := now.Unix() / int64(cookieBucket/time.Second)
	return hmac.Equal(cookie, j.make(src, b)) || hmac.Equal(cookie, j.make(src, b-1))
}

// challenge answers a request that needs an address check with 401 and a
// cookie for src, within the forwarder's cap on such answers (CookieRate,
// CookieBurst, whatever the sources): each is no larger than its request,
// but a flood from many spoofed addresses must not make the forwarder
// send thousands a second at whoever those addresses are. A request over
// the cap is dropped and counted; a device repeats it.
func (c *control) challenge(src netip.AddrPort, req protocol.JoinRequest, now time.Time) {
	cfg := &c.f.cfg
	if !c.challenges.take(cfg.CookieRate/1e9, cfg.CookieBurst, now.UnixNano()) {
		c.f.countDrop(DropCookieRateLimited)
		return
	}
	c.f.cookieChallenges.Add(1) // a challenge, not a refusal
	c.sendError(src, req, protocol.JoinError{Code: protocol.CodeUnauthorized,
		Reason: "address check: repeat with this cookie", Cookie: c.cookies.issue(src, now)})
}
