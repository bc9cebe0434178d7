package forwarder

import (
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// socketBuffer is the receive and send buffer each forwarder socket asks
// for: room for bursts, so a reader briefly busy does not mean drops.
const socketBuffer = 4 << 20

// Socket buffers as granted. Linux caps SO_RCVBUF/SO_SNDBUF at
// net.core.rmem_max/wmem_max whatever is asked, silently; the forwarder
// reads the result back, asks again with SO_RCVBUFFORCE/SO_SNDBUFFORCE
// when it is short (granted to CAP_NET_ADMIN), logs what it got once at
// start (a warning when short of what it asked) and exports it as
// callrelay_forwarder_socket_buffer_bytes.
const (
	sockMedia = iota
	sockTrunk
	numSockKinds
)

var sockKindNames = [numSockKinds]string{"media", "trunk"}

// sockBufs is the smallest receive and send buffer granted to a socket of
// each kind (0: no such socket, -1: the platform does not tell).
type sockBufs [numSockKinds][2]int

var mSockBuf = prometheus.NewDesc("callrelay_forwarder_socket_buffer_bytes",
	"Socket buffer the kernel granted (the smallest over the forwarder's sockets of that kind), by socket kind and direction; the forwarder asks for 4 MiB.",
	[]string{"socket", "direction"}, nil)

// sizeBuffers sizes c's buffers and notes what was granted.
func (f *Forwarder) sizeBuffers(c *net.UDPConn, kind int) {
	rcv, snd := sizeSocketBuffers(c, socketBuffer)
	for i, v := range [2]int{rcv, snd} {
		if old := f.sockBuf[kind][i]; old == 0 || v < old {
			f.sockBuf[kind][i] = v
		}
	}
}

// logBuffers says once what the sockets got.
func (f *Forwarder) logBuffers() {
	for k, b := range f.sockBuf {
		if b[0] == 0 {
			continue // no socket of this kind
		}
		fields := []zap.Field{zap.String("socket", sockKindNames[k]), zap.Int("receive", b[0]), zap.Int("send", b[1]),
			zap.Int("asked", socketBuffer)}
		switch {
		case b[0] < 0:
			f.log.Info("socket buffers asked, the platform does not say what it granted", fields...)
		case b[0] < socketBuffer || b[1] < socketBuffer:
			f.log.Warn("socket buffers smaller than asked: raise net.core.rmem_max and wmem_max, or grant CAP_NET_ADMIN", fields...)
		default:
			f.log.Info("socket buffers", fields...)
		}
	}
}

func (f *Forwarder) collectBuffers(ch chan<- prometheus.Metric) {
	for k, b := range f.sockBuf {
		for i, dir := range [2]string{"receive", "send"} {
			if b[i] > 0 {
				ch <- prometheus.MustNewConstMetric(mSockBuf, prometheus.GaugeValue, float64(b[i]), sockKindNames[k], dir)
			}
		}
	}
}
