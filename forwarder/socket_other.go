//go:build !linux

package forwarder

import "net"

// reusePortSupported: elsewhere the forwarder runs one reader on one socket.
const reusePortSupported = false

func listenUDP(network, addr string, _ bool) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP(network, ua)
}
