package forwarder

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/callrelay/callrelay/protocol"
)

// Trunk replay windows (README 6): every frame that authenticates is
// checked against the window of its stream, (origin tag, stream), before
// anything else reads it, so a replayed frame is dropped and counted
// (DropTrunkReplay), never fanned out.
//
// The windows are shared by the trunk readers: the kernel spreads a
// sender's frames by address over the SO_REUSEPORT sockets, and a replay
// sent from another address lands on another reader, so per-reader
// windows would let it through. Each window is checked with one
// compare-and-swap (protocol.TrunkReplay), no lock; the set of windows is
// a copy-on-write map behind an atomic pointer, written (under mu) only
// when a stream is heard for the first time; each reader keeps the window
// of the last stream it served, so the map is looked up only when the
// stream changes. A window is never removed, so a pointer to it stays
// good.

// controlTrunkStream numbers the frames the control goroutine seals
// (keepalives, key-frame requests); reader i's are stream i, so there are
// fewer readers than this.
const controlTrunkStream = 255

// maxTrunkStreams bounds the windows (4 KiB each): 16 MiB. Only holders of
// the cluster key make streams; one over the bound is dropped, counted as
// a replay.
const maxTrunkStreams = 4096

// trunkStream names a sender's numbering stream.
type trunkStream struct {
	origin uint64
	stream uint8
}

type trunkWindows struct {
	m  atomic.Pointer[map[trunkStream]*protocol.TrunkReplay]
	mu sync.Mutex // serialises adding streams
}

// get returns the window of k, adding it if it is new; nil when there are
// already maxTrunkStreams.
func (w *trunkWindows) get(k trunkStream) *protocol.TrunkReplay {
	if m := w.m.Load(); m != nil {
		if win := (*m)[k]; win != nil {
			return win
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.m.Load()
	if old != nil {
		if win := (*old)[k]; win != nil {
			return win
		}
		if len(*old) >= maxTrunkStreams {
			return nil
		}
	}
	next := make(map[trunkStream]*protocol.TrunkReplay, 1)
	if old != nil {
		next = maps.Clone(*old)
	}
	win := new(protocol.TrunkReplay)
	next[k] = win
	w.m.Store(&next)
	return win
}

// streams is the number of streams heard.
func (w *trunkWindows) streams() int {
	if m := w.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// fresh checks the opened frame in t.hdr against its stream's window.
func (t *trunkReader) fresh() bool {
	k := trunkStream{t.hdr.Origin, t.hdr.Stream}
	if t.win == nil || k != t.winKey {
		t.win, t.winKey = t.f.trunkWin.get(k), k
		if t.win == nil {
			return false
		}
	}
	return t.win.Accept(t.hdr.Seq)
}
