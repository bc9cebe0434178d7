package loadtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/callrelay/callrelay/internal/afpacket"
	"github.com/callrelay/callrelay/internal/mmsg"
)

// The fast engine's frame I/O (Fast.IO). "socket", the default: UDP
// sockets bound to every address, sendmmsg with IP_PKTINFO for each
// device's source address in 127.0.0.0/8, recvmmsg (internal/mmsg): the
// generator pays the kernel's whole UDP path per packet, both ways, as the
// relay does. "packet": raw Ethernet/IPv4/UDP frames on an AF_PACKET
// socket (internal/afpacket) on one end of a veth pair, usually in a
// network namespace the run created (scripts/capacity.sh IO=packet), sent
// with sendmmsg past the qdisc and read from a TPACKET_V3 ring: no socket
// lookup, no UDP or IP receive path, no wake-up per datagram on the
// generator's side. The relay keeps its plain UDP socket on the other end,
// in a namespace of its own too in scripts/capacity.sh (then the
// generator's process sees neither end's address: Packet.Gateway is
// given); the devices' addresses (Fast.Packet.Devices) are routed to the
// generator's end by a static neighbour whose MAC is no interface's, so
// that the generator's kernel drops the relay's frames (PACKET_OTHERHOST)
// right after the ring has copied them: no ICMP, no socket. Frames from
// one device to another (the baseline pairs) are forwarded back by the
// relay side's kernel: the baseline then includes one IP forward there.

// Fast I/O modes.
const (
	FastIOSocket = "socket"
	FastIOPacket = "packet"
)

// PacketIO configures Fast.IO "packet".
type PacketIO struct {
	// NetNS is the network namespace of Iface (a name under
	// /var/run/netns, or a path); empty: the generator's own.
	NetNS string `json:"netns,omitempty" yaml:"netns,omitempty"`
	// Iface is the generator's end of the veth pair.
	Iface string `json:"iface" yaml:"iface"`
	// Gateway is the MAC every frame goes to (the relay's end); empty:
	// the MAC of the interface, in the generator process's own namespace
	// (not NetNS), that holds the first forwarder's address: a relay in
	// another namespace needs it given.
	Gateway string `json:"gateway,omitempty" yaml:"gateway,omitempty"`
	// Devices is the prefix the devices' addresses come from (its first
	// /24 is left out: the mute address); default 198.18.0.0/15 (RFC
	// 2544's benchmark range: 130,000 devices).
	Devices string `json:"devices,omitempty" yaml:"devices,omitempty"`
	// Port is the UDP port of the first of Fast.Sockets conns (the next
	// one's is Port+1...); default 20000.
	Port int `json:"port,omitempty" yaml:"port,omitempty"`
}

// fastConn is one of the engine's frame channels: an mmsg socket or an
// afpacket conn (the same batch calls).
type fastConn interface {
	Queue(b []byte, dst netip.AddrPort, src netip.Addr) bool
	Flush() (sent, failed int)
	ReadBatch() (int, error)
	Buf(i int) []byte
	Dst(i int) netip.Addr
	RxTime(i int) int64
	Dropped() uint64
	LocalAddr() netip.AddrPort
	Close() error
}

var (
	_ fastConn = (*mmsg.Conn)(nil)
	_ fastConn = (*afpacket.Conn)(nil)
)

func (f Fast) packetDefaults() Fast {
	if f.IO == "" {
		f.IO = FastIOSocket
	}
	if f.IO != FastIOPacket {
		return f // no packet settings in a socket plan's JSON
	}
	if f.Packet.Devices == "" {
		f.Packet.Devices = "198.18.0.0/15"
	}
	if f.Packet.Port == 0 {
		f.Packet.Port = 20000
	}
	return f
}

// validateIO says what of f's I/O cannot run.
func validateIO(f Fast) error {
	switch f.IO {
	case FastIOSocket:
		return nil
	case FastIOPacket:
	default:
		return fmt.Errorf("fast.io %q: want %s or %s", f.IO, FastIOSocket, FastIOPacket)
	}
	var errs []error
	if f.Packet.Iface == "" {
		errs = append(errs, errors.New("fast.io packet: needs fast.packet.iface (--fast-iface), the generator's end of the veth pair"))
	}
	if f.Target == TargetTURN {
		errs = append(errs, errors.New("fast.io packet: not with target turn (its setups use kernel sockets from the devices' addresses)"))
	}
	if _, err := packetRange(f.Packet.Devices); err != nil {
		errs = append(errs, err)
	}
	if f.Packet.Port < 1 || f.Packet.Port+f.Sockets > 65535 {
		errs = append(errs, fmt.Errorf("fast.packet.port %d: want 1..%d", f.Packet.Port, 65535-f.Sockets))
	}
	if _, err := gatewayMAC(f.Packet.Gateway, nil); f.Packet.Gateway != "" && err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func packetRange(devices string) (addrRange, error) {
	p, err := netip.ParsePrefix(devices)
	if err != nil {
		return addrRange{}, fmt.Errorf("fast.packet.devices: %w", err)
	}
	return rangeOf(p)
}

// gatewayMAC is mac, or when empty the MAC of the interface holding one
// of addrs.
func gatewayMAC(mac string, addrs []netip.AddrPort) (afpacket.MAC, error) {
	if mac != "" {
		m, ok := afpacket.ParseMAC(mac)
		if !ok {
			return m, fmt.Errorf("fast.packet.gateway %q: want a MAC like 02:00:00:00:00:01", mac)
		}
		return m, nil
	}
	ifcs, err := net.Interfaces()
	if err != nil {
		return afpacket.MAC{}, err
	}
	for _, ifc := range ifcs {
		as, _ := ifc.Addrs()
		for _, a := range as {
			n, ok := a.(*net.IPNet)
			ip, ok2 := netip.AddrFromSlice(n.IP)
			if !ok || !ok2 || len(ifc.HardwareAddr) != 6 {
				continue
			}
			for _, f := range addrs {
				if ip.Unmap() == f.Addr().Unmap() {
					return afpacket.MAC(ifc.HardwareAddr), nil
				}
			}
		}
	}
	return afpacket.MAC{}, fmt.Errorf("fast.io packet: no interface in the generator's network namespace holds %v "+
		"(a relay in a namespace of its own is not seen): give fast.packet.gateway (--fast-gateway), the MAC of the relay's end", addrs)
}

// packetWriteBatch is how many frames one sendmmsg on a packet conn
// carries: a whole tick's frames at the rates a capacity ramp reaches
// (~100 a millisecond at 200k packets/s in + out), so a tick costs one
// system call and one wake-up of the relay's core, not two (each is a VM
// exit here: docs/capacity.md, Packet I/O).
const packetWriteBatch = 256

// openConns opens the engine's Fast.Sockets conns and sets its device
// range.
func (e *fastEngine) openConns() error {
	if e.f.IO != FastIOPacket {
		e.addrs = loopbackRange
		return e.openSockets()
	}
	var err error
	if e.addrs, err = packetRange(e.f.Packet.Devices); err != nil {
		return err
	}
	gw, err := gatewayMAC(e.f.Packet.Gateway, e.p.Forwarders)
	if err != nil {
		return err
	}
	for i := range e.f.Sockets {
		c, err := afpacket.Open(afpacket.Config{NetNS: e.f.Packet.NetNS, Iface: e.f.Packet.Iface, Gateway: gw,
			Port: uint16(e.f.Packet.Port + i), WriteBatch: packetWriteBatch}) //nolint:gosec // validated
		if err != nil {
			e.closeSockets()
			return fmt.Errorf("loadtest: fast engine: %w", err)
		}
		e.socks = append(e.socks, c)
	}
	return nil
}

func (e *fastEngine) openSockets() error {
	for range e.f.Sockets {
		// Bound to a port on every address: the devices' addresses are
		// all of 127.0.0.0/8; the readers drop what is for none of them.
		c, err := mmsg.Open(netip.MustParseAddrPort("0.0.0.0:0"), mmsg.Options{PktInfo: true, Buffer: 8 << 20,
			ReuseAddr:    e.f.Target == TargetTURN, // TURN setups bind each device's address to the same port
			DontFragment: true,                     // no hashed IP ID per datagram
			RxTime:       true})                    // arrival times are the kernel's (fast_recv.go)
		if err != nil {
			e.closeSockets()
			return fmt.Errorf("loadtest: fast engine: %w", err)
		}
		e.socks = append(e.socks, c)
	}
	return nil
}

// overruns is how many frames the relay side refused as they were sent
// (packet I/O).
func (e *fastEngine) overruns() uint64 {
	var n uint64
	for _, rd := range e.rds {
		if c, ok := rd.c.(*afpacket.Conn); ok {
			n += c.Overruns()
		}
	}
	return n
}
