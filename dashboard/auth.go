package dashboard

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// Who may see what. A viewer sees the whole page and the call drill-down
// but for device addresses (ip:port: what an attacker needs to aim a
// spoofed instruction at a device); an admin sees those too. The tokens
// come from Config.ViewerToken and Config.AdminToken; a request presents
// one as "Authorization: Bearer <token>", or a browser opens the page once
// with ?token=<token> and is given a session cookie derived from it (HttpOnly,
// SameSite=Lax) and sent back to the same address without the token. Lax,
// not Strict: a Strict cookie set by a link followed from another site (a
// runbook, a chat) is not sent on the redirect that follows it; and every
// route is a read-only GET, so there is nothing for a forged cross-site
// request to do (the page cannot be framed: frame-ancestors 'none').
// With no token configured every request is a viewer's, and the dashboard
// listens on loopback only (New refuses any other address).
//
// /healthz, /readyz and /metrics need no token: probes and Prometheus
// reach them, and they say nothing about devices.

type role int

const (
	roleNone role = iota
	roleViewer
	roleAdmin
)

func (r role) String() string {
	switch r {
	case roleViewer:
		return "viewer"
	case roleAdmin:
		return "admin"
	}
	return "none"
}

// MinTokenLen is the shortest token accepted: 16 characters of a random
// base64 or hex string are at least 64 bits.
const MinTokenLen = 16

// sessionCookie holds a browser's proof of a token.
const sessionCookie = "callrelay_dashboard"

// tokenChars are those of RFC 6750's b64token: a bearer token as a client
// sends it, with no quoting or escaping.
const tokenChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="

// checkToken says what is wrong with a token, what names it in the
// message (e.g. "--admin-token").
func checkToken(what, tok string) error {
	if len(tok) < MinTokenLen {
		return fmt.Errorf("dashboard: %s is %d characters: want at least %d (make tokens with `callrelay token dashboard`)", what, len(tok), MinTokenLen)
	}
	if i := strings.IndexFunc(tok, func(c rune) bool { return !strings.ContainsRune(tokenChars, c) }); i >= 0 {
		return fmt.Errorf("dashboard: %s has %q at %d: want letters, digits and -._~+/= only (make tokens with `callrelay token dashboard`)", what, tok[i], i)
	}
	return nil
}

// credential is one configured token as requests present it: the SHA-256
// of the token (compared in constant time against that of a presented
// one) and the session cookie's value.
type credential struct {
	role   role
	digest [sha256.Size]byte
	cookie string
}

func newCredential(r role, tok string) credential {
	mac := hmac.New(sha256.New, []byte(tok))
	mac.Write([]byte("callrelay dashboard session cookie"))
	return credential{role: r, digest: sha256.Sum256([]byte(tok)), cookie: hex.EncodeToString(mac.Sum(nil))}
}

// auth holds the configured credentials; none: every request is a viewer.
type auth struct{ creds []credential }

func newAuth(viewer, admin string) auth {
	var a auth
	if admin != "" {
		a.creds = append(a.creds, newCredential(roleAdmin, admin))
	}
	if viewer != "" {
		a.creds = append(a.creds, newCredential(roleViewer, viewer))
	}
	return a
}

func (a auth) open() bool { return len(a.creds) == 0 }

// tokenRole is the role of a presented token, roleNone if it is no
// configured one. Every credential is compared, whatever matches.
func (a auth) tokenRole(tok string) role {
	d := sha256.Sum256([]byte(tok))
	got := roleNone
	for _, c := range a.creds {
		if subtle.ConstantTimeCompare(d[:], c.digest[:]) == 1 {
			got = max(got, c.role)
		}
	}
	return got
}

func (a auth) cookieRole(v string) role {
	got := roleNone
	for _, c := range a.creds {
		if subtle.ConstantTimeCompare([]byte(v), []byte(c.cookie)) == 1 {
			got = max(got, c.role)
		}
	}
	return got
}

// roleOf is what the request proves: a bearer header, else the session
// cookie.
func (a auth) roleOf(r *http.Request) role {
	if a.open() {
		return roleViewer
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return roleNone
		}
		return a.tokenRole(strings.TrimSpace(tok))
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		return a.cookieRole(c.Value)
	}
	return roleNone
}

type roleKey struct{}

// roleIn is the role the request was let in with.
func roleIn(ctx context.Context) role {
	r, _ := ctx.Value(roleKey{}).(role)
	return r
}

// require lets in requests that prove at least a viewer's role. A browser
// opening any page with a valid ?token= gets the session cookie and is sent
// to the same address without it, so the token leaves the address bar.
func (a auth) require(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query(); q.Has("token") && !a.open() {
			ro := a.tokenRole(q.Get("token"))
			if ro == roleNone {
				a.refuse(w, r)
				return
			}
			for _, c := range a.creds {
				if c.role == ro {
					http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: c.cookie, Path: "/", HttpOnly: true,
						SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"})
				}
			}
			q.Del("token")
			w.Header().Set("Location", sameWithout(r.URL.Path, q.Encode()))
			w.WriteHeader(http.StatusSeeOther)
			return
		}
		ro := a.roleOf(r)
		if ro == roleNone {
			a.refuse(w, r)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), roleKey{}, ro)))
	})
}

// sameWithout is a relative reference to the page at path with query
// instead of its own (relative, so that a proxy serving the dashboard under
// a prefix keeps it).
func sameWithout(path, query string) string {
	loc := "./"
	if i := strings.LastIndexByte(path, '/'); i >= 0 && i < len(path)-1 {
		loc = "./" + path[i+1:]
	}
	if query != "" {
		loc += "?" + query
	}
	return loc
}

func (a auth) refuse(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="callrelay dashboard"`)
	const how = "this dashboard needs a token: open it once as /?token=<viewer or admin token> " +
		"(the page then keeps a session cookie), or send Authorization: Bearer <token>"
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/events" {
		writeJSON(w, http.StatusUnauthorized, apiError{Error: how})
		return
	}
	http.Error(w, how, http.StatusUnauthorized)
}
