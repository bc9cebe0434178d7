//go:build linux

package afpacket

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
)

// Lab is a pair of network namespaces joined by a veth pair, for tests
// (root): the generator's side (GenNS, GenIface) with no address at all,
// and the relay's (RelayNS, RelayIface at RelayAddr/30) routing Devices
// to the generator side by a static neighbour whose MAC is no interface's
// (DeviceMAC), so that the generator side's kernel drops those frames
// (PACKET_OTHERHOST) once a Conn has tapped them. Frames from one device
// to another are forwarded back by the relay side (forwarding on for its
// veth only): the generator's direct (baseline) path. Close removes both.
type Lab struct {
	GenNS, RelayNS       string
	GenIface, RelayIface string
	RelayAddr            netip.Addr
	RelayMAC, DeviceMAC  MAC
	Devices              netip.Prefix
}

var labSeq atomic.Int32

// NewLab makes a Lab with the device addresses devices.
func NewLab(devices netip.Prefix) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("afpacket: a lab needs root (ip netns, veth)")
	}
	n := labSeq.Add(1)
	id := fmt.Sprintf("cr%d%02d", os.Getpid()%100000, n%100)
	l := &Lab{GenNS: id + "g", RelayNS: id + "r", GenIface: id + "g", RelayIface: id + "r",
		RelayAddr: netip.AddrFrom4([4]byte{10, 250, byte(n), 1}), Devices: devices,
		RelayMAC: MAC{2, 0xcc, 0, 0, byte(n), 1}, DeviceMAC: MAC{2, 0xcc, 0, 0, byte(n), 3}}
	gw := netip.AddrFrom4([4]byte{10, 250, byte(n), 2})
	steps := [][]string{
		{"netns", "add", l.GenNS},
		{"netns", "add", l.RelayNS},
		{"link", "add", l.RelayIface, "netns", l.RelayNS, "address", l.RelayMAC.String(), "type", "veth",
			"peer", "name", l.GenIface, "netns", l.GenNS, "address", MAC{2, 0xcc, 0, 0, byte(n), 2}.String()},
		{"-n", l.GenNS, "link", "set", "lo", "up"},
		{"-n", l.GenNS, "link", "set", l.GenIface, "up"},
		{"-n", l.RelayNS, "link", "set", "lo", "up"},
		{"-n", l.RelayNS, "addr", "add", l.RelayAddr.String() + "/30", "dev", l.RelayIface},
		{"-n", l.RelayNS, "link", "set", l.RelayIface, "up"},
		{"-n", l.RelayNS, "neigh", "add", gw.String(), "lladdr", l.DeviceMAC.String(), "dev", l.RelayIface, "nud", "permanent"},
		{"-n", l.RelayNS, "route", "add", devices.String(), "via", gw.String(), "dev", l.RelayIface},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			l.Close()
			return nil, fmt.Errorf("afpacket: ip %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	err := InNetNS(l.RelayNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/"+l.RelayIface+"/forwarding", []byte("1\n"), 0o644)
	})
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("afpacket: forwarding on %s: %w", l.RelayIface, err)
	}
	return l, nil
}

// Close deletes the namespaces (and with them the veth pair).
func (l *Lab) Close() {
	for _, ns := range []string{l.GenNS, l.RelayNS} {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}
