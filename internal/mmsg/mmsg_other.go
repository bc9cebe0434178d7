//go:build !linux

package mmsg

import (
	"errors"
	"net/netip"
)

// Conn is batched UDP I/O; only Linux has it.
type Conn struct{}

// ErrUnsupported: batched I/O with per-datagram addresses needs Linux.
var ErrUnsupported = errors.New("mmsg: batched UDP I/O needs Linux")

// Open fails off Linux.
func Open(netip.AddrPort, Options) (*Conn, error) { return nil, ErrUnsupported }

func (c *Conn) LocalAddr() netip.AddrPort                     { return netip.AddrPort{} }
func (c *Conn) ReadBatch() (int, error)                       { return 0, ErrUnsupported }
func (c *Conn) Buf(int) []byte                                { return nil }
func (c *Conn) Src(int) netip.AddrPort                        { return netip.AddrPort{} }
func (c *Conn) Dst(int) netip.Addr                            { return netip.Addr{} }
func (c *Conn) Queue([]byte, netip.AddrPort, netip.Addr) bool { return false }
func (c *Conn) Flush() (int, int)                             { return 0, 0 }
func (c *Conn) Dropped() uint64                               { return 0 }
func (c *Conn) Close() error                                  { return nil }
