// Package reflector is the bare batched reflector the capacity benchmark
// measures the forwarder against: the same batch I/O (recvmmsg/sendmmsg,
// internal/mmsg) and no logic but a table from a sender's address to the
// other members of its group. A device registers with a datagram of
// Register's form (answered with the same bytes); every other datagram from
// a registered address goes, unchanged, to the other members of its group;
// anything else is dropped and counted.
//
// It authenticates nothing and keeps no state but the table: it is a
// yardstick (what one core costs per packet moved with no relay logic at
// all), never a relay to deploy.
package reflector

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync/atomic"

	"github.com/callrelay/callrelay/internal/mmsg"
)

// registerMagic starts a registration; the group id follows (8 bytes).
var registerMagic = []byte("CRREFLECT1")

// RegisterSize is the length of a registration datagram.
const RegisterSize = 18

// MaxGroup bounds a group's members; registrations beyond it are dropped.
const MaxGroup = 64

// Register returns the registration datagram for group.
func Register(group uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), registerMagic...), group)
}

// parseRegister returns the group of a registration datagram.
func parseRegister(b []byte) (uint64, bool) {
	if len(b) != RegisterSize || !bytes.Equal(b[:len(registerMagic)], registerMagic) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[len(registerMagic):]), true
}

// Stats are the reflector's counters.
type Stats struct {
	In, Out, Registered, Dropped, SendFailed, SocketDrops uint64
}

// Reflector is one socket and its table.
type Reflector struct {
	conn    *mmsg.Conn
	groups  map[uint64][]netip.AddrPort
	members map[netip.AddrPort]uint64

	in, out, registered, dropped, failed, socketDrops atomic.Uint64
}

// Listen binds the reflector's socket.
func Listen(addr netip.AddrPort) (*Reflector, error) {
	c, err := mmsg.Open(addr, mmsg.Options{Buffer: 8 << 20})
	if err != nil {
		return nil, err
	}
	return &Reflector{conn: c, groups: map[uint64][]netip.AddrPort{}, members: map[netip.AddrPort]uint64{}}, nil
}

// Addr is the bound address.
func (r *Reflector) Addr() netip.AddrPort { return r.conn.LocalAddr() }

// Stats returns the counters.
func (r *Reflector) Stats() Stats {
	return Stats{In: r.in.Load(), Out: r.out.Load(), Registered: r.registered.Load(), Dropped: r.dropped.Load(),
		SendFailed: r.failed.Load(), SocketDrops: r.socketDrops.Load()}
}

// Run reflects until ctx ends (it closes the socket then).
func (r *Reflector) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = r.conn.Close() })
	defer stop()
	for {
		n, err := r.conn.ReadBatch()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne interface{ Temporary() bool }
			if errors.As(err, &ne) && ne.Temporary() {
				continue
			}
			return err
		}
		r.in.Add(uint64(n))
		for i := range n {
			r.handle(r.conn.Buf(i), r.conn.Src(i))
		}
		r.flush()
		r.socketDrops.Add(r.conn.Dropped())
	}
}

// handle registers or reflects one datagram (its bytes stay valid until
// the flush after the batch).
func (r *Reflector) handle(b []byte, src netip.AddrPort) {
	g, ok := r.members[src]
	if !ok {
		r.register(b, src)
		return
	}
	if gid, isReg := parseRegister(b); isReg && gid == g {
		r.queue(b, src) // a repeated registration: answer again
		return
	}
	for _, m := range r.groups[g] {
		if m != src {
			r.queue(b, m)
		}
	}
}

func (r *Reflector) register(b []byte, src netip.AddrPort) {
	g, ok := parseRegister(b)
	if !ok || len(r.groups[g]) >= MaxGroup {
		r.dropped.Add(1)
		return
	}
	r.members[src] = g
	r.groups[g] = append(r.groups[g], src)
	r.registered.Add(1)
	r.queue(b, src)
}

func (r *Reflector) queue(b []byte, dst netip.AddrPort) {
	if !r.conn.Queue(b, dst, netip.Addr{}) {
		r.flush()
		r.conn.Queue(b, dst, netip.Addr{})
	}
}

func (r *Reflector) flush() {
	sent, failed := r.conn.Flush()
	r.out.Add(uint64(sent))
	r.failed.Add(uint64(failed))
}
