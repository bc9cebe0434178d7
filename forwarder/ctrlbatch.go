package forwarder

import (
	"net/netip"

	"github.com/pion/rtcp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/mmsg"
)

// ctrlBatch is the control goroutine's write batch for its feedback tick:
// what it sends devices there (REMB, PLI, TargetBitrate and
// SimulcastControl, probes) is copied into fixed slots and sent with one
// sendmmsg per ctrlBatchSize datagrams on the first socket (internal/mmsg,
// as the readers send), not one sendto each. At 1,000 senders a tick sends
// 200 REMBs. A datagram waits at most until the end of its tick.
type ctrlBatch struct {
	pc   *mmsg.Conn // nil: no socket to batch on; sent one by one
	on   bool       // inside a tick: queue
	n    int
	to   [ctrlBatchSize]sockaddr
	bufs [ctrlBatchSize][maxDatagram]byte
	remb rtcp.ReceiverEstimatedMaximumBitrate // marshalled in place
	ssrc [maxSSRCs]uint32
}

const ctrlBatchSize = 64

// startBatch makes the tick's sends queue until endBatch.
func (c *control) startBatch() {
	if c.out == nil {
		c.out = new(ctrlBatch)
		if len(c.f.conns) > 0 {
			pc, err := mmsg.Wrap(c.f.conns[0], mmsg.Options{ReadBatch: 1, WriteBatch: ctrlBatchSize, BufSize: 16})
			if err != nil {
				c.f.log.Warn("control sends unbatched", zap.Error(err))
			}
			c.out.pc = pc
		}
	}
	c.out.on = c.out.pc != nil
}

// endBatch sends what the tick queued.
func (c *control) endBatch() {
	c.flushBatch()
	c.out.on = false
}

func (c *control) flushBatch() {
	o := c.out
	if o.n == 0 {
		return
	}
	_, failed := o.pc.Flush()
	if failed > 0 {
		c.f.ctrlDrops.drops[DropSendFailed].Add(uint64(failed))
	}
	o.n = 0
}

// slot is the next free buffer of the batch, nil when not batching to.
func (c *control) slot(to netip.AddrPort) []byte {
	o := c.out
	if o == nil || !o.on || isStreamAddr(to) {
		return nil
	}
	if o.n == ctrlBatchSize {
		c.flushBatch()
	}
	return o.bufs[o.n][:]
}

// tickSend sends b to a device: queued in the tick's batch, else at once.
func (c *control) tickSend(b []byte, to netip.AddrPort) {
	buf := c.slot(to)
	if buf == nil || len(b) > len(buf) {
		c.f.reply(b, to)
		return
	}
	c.queueSlot(copy(buf, b), to)
}

// queueSlot queues the next slot's first n bytes to to.
func (c *control) queueSlot(n int, to netip.AddrPort) {
	o := c.out
	o.to[o.n] = encodeSockaddr(to, c.f.v6)
	o.pc.QueueTo(o.bufs[o.n][:n], &o.to[o.n].Sockaddr)
	o.n++
}

// sendREMB tells sender m its uplink estimate, marshalled into the batch
// without allocating.
func (c *control) sendREMB(to netip.AddrPort, m *mediaInfo, bps uint64) {
	buf := c.slot(to)
	if buf == nil {
		c.sendRTCP(to, &rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: float32(bps), SSRCs: m.ssrcList()})
		return
	}
	o := c.out
	k := 0
	for ; k < len(o.ssrc); k++ {
		v, ok := m.ssrcs[k].get()
		if !ok {
			break
		}
		o.ssrc[k] = v
	}
	o.remb.Bitrate, o.remb.SSRCs = float32(bps), o.ssrc[:k]
	n, err := o.remb.MarshalTo(buf)
	if err != nil {
		c.f.log.Error("encoding REMB", zap.Error(err))
		return
	}
	c.queueSlot(n, to)
	c.f.targetsSent.Add(1)
}
