package linkem

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Router is the link emulator at the IP level, for topologies of network
// namespaces (internal/testkit/regions): it reads IPv4 packets from a
// device, typically a TUN interface that policy routing sends every packet
// between sites through, and writes each back to the device after the
// impairment of its path, so the kernel routes it on to its destination.
// Sites are named address prefixes; a path is an ordered pair of distinct
// sites (the packet's source and destination), each with its own Profile,
// shaper, queue and counters, exactly as one direction of a Link. Packets
// whose source or destination is in no site, or both in the same one, and
// packets that are not IPv4, are written back at once and counted as
// Unrouted.
//
// Like Link it is a test tool, never for a production path.
type Router struct {
	dev      io.ReadWriteCloser
	sites    []Site
	paths    []*pipe // from*len(sites)+to; nil on the diagonal
	unrouted atomic.Uint64
	readErrs atomic.Uint64

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Site is a named set of addresses: a region's or a city's namespace.
type Site struct {
	Name   string
	Prefix netip.Prefix
}

// ErrUnknownSite: a path named a site the router does not have.
var ErrUnknownSite = errors.New("linkem: unknown site")

// NewRouter starts a router on dev for sites (at most 64, with distinct
// names and non-overlapping IPv4 prefixes), every path passing packets
// unimpaired until SetPath says otherwise. seed makes the random loss and
// jitter reproducible. Close stops it and closes dev.
func NewRouter(dev io.ReadWriteCloser, sites []Site, seed int64) (*Router, error) {
	if len(sites) > 64 {
		return nil, fmt.Errorf("linkem: %d sites, at most 64", len(sites))
	}
	for i, s := range sites {
		if !s.Prefix.IsValid() || !s.Prefix.Addr().Is4() {
			return nil, fmt.Errorf("linkem: site %q: prefix %v is not IPv4", s.Name, s.Prefix)
		}
		for _, o := range sites[:i] {
			if o.Name == s.Name || o.Prefix.Overlaps(s.Prefix) {
				return nil, fmt.Errorf("linkem: sites %q (%v) and %q (%v) collide", o.Name, o.Prefix, s.Name, s.Prefix)
			}
		}
	}
	r := &Router{dev: dev, sites: append([]Site(nil), sites...), paths: make([]*pipe, len(sites)*len(sites)),
		stop: make(chan struct{})}
	write := func(b []byte) error { _, err := dev.Write(b); return err }
	for from := range sites {
		for to := range sites {
			if from == to {
				continue
			}
			p := newPath(write, Profile{}, uint64(seed), uint64(from<<8|to))
			r.paths[from*len(sites)+to] = p
			r.wg.Add(1)
			go func() { defer r.wg.Done(); p.schedule(r.stop) }()
		}
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.read() }()
	return r, nil
}

// read is the reader goroutine; it returns when dev is closed.
func (r *Router) read() {
	buf := make([]byte, readBufSize)
	for {
		n, err := r.dev.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			select {
			case <-r.stop:
				return
			default:
				r.readErrs.Add(1)
				continue
			}
		}
		at := time.Now()
		if p := r.pathOf(buf[:n]); p != nil {
			p.admit(at, buf[:n])
			continue
		}
		r.unrouted.Add(1)
		_, _ = r.dev.Write(buf[:n])
	}
}

// pathOf is the path of an IPv4 packet, nil if it has none.
func (r *Router) pathOf(b []byte) *pipe {
	if len(b) < 20 || b[0]>>4 != 4 {
		return nil
	}
	from, to := r.siteOf([4]byte(b[12:16])), r.siteOf([4]byte(b[16:20]))
	if from < 0 || to < 0 {
		return nil
	}
	return r.paths[from*len(r.sites)+to] // nil when from == to
}

func (r *Router) siteOf(a [4]byte) int {
	addr := netip.AddrFrom4(a)
	for i, s := range r.sites {
		if s.Prefix.Contains(addr) {
			return i
		}
	}
	return -1
}

func (r *Router) path(from, to string) (*pipe, error) {
	f, t := -1, -1
	for i, s := range r.sites {
		if s.Name == from {
			f = i
		}
		if s.Name == to {
			t = i
		}
	}
	if f < 0 || t < 0 || f == t {
		return nil, fmt.Errorf("%w: path %q -> %q", ErrUnknownSite, from, to)
	}
	return r.paths[f*len(r.sites)+t], nil
}

// SetPath sets the impairment of packets from site from to site to, for
// packets read from now on.
func (r *Router) SetPath(from, to string, p Profile) error {
	pp, err := r.path(from, to)
	if err != nil {
		return err
	}
	pp.setProfile(p)
	return nil
}

// PathStats returns the counters of the path from site from to site to.
func (r *Router) PathStats(from, to string) (DirStats, error) {
	pp, err := r.path(from, to)
	if err != nil {
		return DirStats{}, err
	}
	return pp.c.snapshot(), nil
}

// Unrouted is how many packets were written back unimpaired: not IPv4, or
// not between two sites.
func (r *Router) Unrouted() uint64 { return r.unrouted.Load() }

// Close stops the router's goroutines and closes dev; packets still
// waiting are discarded. It is idempotent.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		r.closeErr = r.dev.Close()
		r.wg.Wait()
	})
	return r.closeErr
}
