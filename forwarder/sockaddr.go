package forwarder

import (
	"net/netip"

	"github.com/callrelay/callrelay/internal/mmsg"
)

// sockaddr is a destination encoded once, in the kernel's layout for the
// socket's family (internal/mmsg), so that the send path copies nothing and
// converts nothing, with the address it encodes.
type sockaddr struct {
	mmsg.Sockaddr
	ap netip.AddrPort
}

// encodeSockaddr lays out ap for a socket of the given family (v6 sockets
// reach IPv4 peers through v4-mapped addresses).
func encodeSockaddr(ap netip.AddrPort, v6socket bool) sockaddr {
	return sockaddr{Sockaddr: mmsg.EncodeSockaddr(ap, v6socket), ap: ap}
}
