package linkem

import "sync/atomic"

// Stats counts what a link did, per direction.
type Stats struct {
	Up   DirStats // client to server
	Down DirStats // server to client
}

// DirStats counts one direction. Every packet counted in Received ends up in
// exactly one of Delivered, Lost, QueueDropped, Limit and SendErrors, or is
// still in flight. Stray packets are not counted in Received.
type DirStats struct {
	Received          uint64 // packets read by the link
	ReceivedBytes     uint64
	Delivered         uint64 // packets sent on, after their delay
	DeliveredBytes    uint64
	Lost              uint64 // dropped by random loss (Profile.Loss)
	LostBytes         uint64
	QueueDropped      uint64 // tail-dropped at a full bottleneck queue
	QueueDroppedBytes uint64
	// Limit counts packets dropped at the link's own bounds: longer than
	// MaxPayload, or MaxInFlight packets already waiting.
	Limit uint64
	// SendErrors counts packets whose relaying write failed.
	SendErrors uint64
	// Stray counts datagrams not relayed because they came from somewhere
	// other than the server (down) or had no client to go to yet.
	Stray uint64
}

// InFlight is how many received packets have not yet been delivered or
// dropped.
func (d DirStats) InFlight() uint64 {
	return d.Received - d.Delivered - d.Lost - d.QueueDropped - d.Limit - d.SendErrors
}

type counters struct {
	received, receivedBytes         atomic.Uint64
	delivered, deliveredBytes       atomic.Uint64
	lost, lostBytes                 atomic.Uint64
	queueDropped, queueDroppedBytes atomic.Uint64
	limit, sendErrors, stray        atomic.Uint64
}

func (c *counters) snapshot() DirStats {
	// Outcomes before Received, so that InFlight never underflows.
	d := DirStats{
		Delivered:         c.delivered.Load(),
		DeliveredBytes:    c.deliveredBytes.Load(),
		Lost:              c.lost.Load(),
		LostBytes:         c.lostBytes.Load(),
		QueueDropped:      c.queueDropped.Load(),
		QueueDroppedBytes: c.queueDroppedBytes.Load(),
		Limit:             c.limit.Load(),
		SendErrors:        c.sendErrors.Load(),
		Stray:             c.stray.Load(),
	}
	d.Received = c.received.Load()
	d.ReceivedBytes = c.receivedBytes.Load()
	return d
}
