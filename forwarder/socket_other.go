//go:build !linux

package forwarder

import (
	"net"
	"time"
)

// reusePortSupported: elsewhere the forwarder runs one reader on one socket.
const reusePortSupported = false

func listenUDP(network, addr string, _ bool) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP(network, ua)
}

// sizeSocketBuffers asks for want bytes of receive and send buffer; this
// platform's result is not read back (-1).
func sizeSocketBuffers(c *net.UDPConn, want int) (rcv, snd int) {
	_ = c.SetReadBuffer(want)
	_ = c.SetWriteBuffer(want)
	return -1, -1
}

// pauseNS sleeps ns (pace.go); elsewhere with the runtime's timer.
func pauseNS(ns int64) { time.Sleep(time.Duration(ns)) }
