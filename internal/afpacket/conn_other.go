//go:build !linux

package afpacket

import (
	"errors"
	"net/netip"
)

// Config says where a Conn's frames go and what it reads (Linux only).
type Config struct {
	NetNS, Iface                  string
	Gateway                       MAC
	Port                          uint16
	Checksum                      bool
	WriteBatch, Blocks, BlockSize int
}

// Conn is an AF_PACKET socket: Linux only; Open fails elsewhere.
type Conn struct{}

var errNotLinux = errors.New("afpacket: AF_PACKET is Linux only")

// Open fails: AF_PACKET is Linux only.
func Open(Config) (*Conn, error) { return nil, errNotLinux }

// InNetNS fails unless ns is empty (fn then runs here).
func InNetNS(ns string, fn func() error) error {
	if ns != "" {
		return errNotLinux
	}
	return fn()
}

func (c *Conn) LocalAddr() netip.AddrPort                     { return netip.AddrPort{} }
func (c *Conn) Link() Link                                    { return Link{} }
func (c *Conn) Queue([]byte, netip.AddrPort, netip.Addr) bool { return false }
func (c *Conn) Flush() (int, int)                             { return 0, 0 }
func (c *Conn) ReadBatch() (int, error)                       { return 0, errNotLinux }
func (c *Conn) Buf(int) []byte                                { return nil }
func (c *Conn) Dst(int) netip.Addr                            { return netip.Addr{} }
func (c *Conn) RxTime(int) int64                              { return 0 }
func (c *Conn) Dropped() uint64                               { return 0 }
func (c *Conn) Close() error                                  { return nil }
