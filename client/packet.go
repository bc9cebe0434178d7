package client

import (
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// MaxPacketSize is the largest media datagram a Conn delivers; larger ones
// are dropped and counted as Stray. Media over the relay is sized for the
// path MTU, well below it.
const MaxPacketSize = 1500

// Packet is one RTP or RTCP datagram received from the forwarder, byte-exact
// as the forwarder sent it. Packets come from a pool: call Release when done
// with Data to let the Conn reuse the buffer (forgetting is safe, only
// slower). Do not touch the Packet after Release, and release it once.
type Packet struct {
	Kind     protocol.PacketKind // protocol.KindRTP or protocol.KindRTCP
	Data     []byte
	Received time.Time // when the reader got it

	buf [MaxPacketSize + 1]byte // one spare byte detects oversized datagrams
}

var packetPool = sync.Pool{New: func() any { return new(Packet) }}

func getPacket() *Packet { return packetPool.Get().(*Packet) }

// Release returns the packet's buffer to the pool.
func (p *Packet) Release() {
	p.Data = nil
	p.Kind = protocol.KindUnknown
	packetPool.Put(p)
}
