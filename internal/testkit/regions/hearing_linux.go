package regions

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

// Hearing is what a set of city devices had sent and heard at one moment.
type Hearing struct {
	Sent  []int64           // by device, in the order given
	Heard map[[2]uint32]int // by (receiver SSRC, sender SSRC)
}

// HearingOf takes ds's counts now.
func HearingOf(ds []*CityDevice) Hearing {
	h := Hearing{Heard: map[[2]uint32]int{}}
	for _, a := range ds {
		h.Sent = append(h.Sent, a.Sent.Load())
		for _, b := range ds {
			h.Heard[[2]uint32{a.SSRC, b.SSRC}], _ = a.From(b.SSRC)
		}
	}
	return h
}

// CheckHeard: once the devices stopped talking, each heard, since base, at
// least 99 % of what each other sent since base (byte for byte; packets in
// flight at base make up for those in flight at the end), and none was
// corrupt. It returns the worst share.
func CheckHeard(t *testing.T, ds []*CityDevice, base Hearing) float64 {
	t.Helper()
	share := func() (float64, error) {
		worst := 1.0
		for _, a := range ds {
			for j, b := range ds {
				if a == b {
					continue
				}
				n, corrupt := a.From(b.SSRC)
				if corrupt > 0 {
					return 0, fmt.Errorf("%d corrupt packets", corrupt)
				}
				sent := b.Sent.Load() - base.Sent[j]
				got := float64(n-base.Heard[[2]uint32{a.SSRC, b.SSRC}]) / float64(sent)
				worst = math.Min(worst, got)
				if got < 0.99 {
					return worst, fmt.Errorf("%#x heard %.1f %% of the %d packets %#x sent", a.SSRC, 100*got, sent, b.SSRC)
				}
			}
		}
		return worst, nil
	}
	var worst float64
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() (err error) { worst, err = share(); return err })
	// For the figure: what is still in flight (the longest emulated path
	// in these tests is under 200 ms) arrives within a second.
	for end := time.Now().Add(time.Second); worst < 1 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		worst, _ = share()
	}
	return worst
}
