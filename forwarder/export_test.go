package forwarder

import "net/netip"

// PoliceCapBps is the ingress cap of the session at a, bits per second (0:
// not policed, or no session there): for the tests of package
// forwarder_test, which see the forwarder from outside.
func (f *Forwarder) PoliceCapBps(a netip.AddrPort) int64 {
	if rte := f.routes.Load().bySrc[a]; rte != nil && rte.media != nil {
		return rte.media.police.capRate.Load() * 8
	}
	return 0
}
