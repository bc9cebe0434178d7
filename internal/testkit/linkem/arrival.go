package linkem

import "time"

// maxStampLag bounds how far in the past a kernel receive timestamp may lie
// and still be believed; an older one (or one in the future) means the wall
// clock was stepped, and the read time is used instead.
const maxStampLag = time.Second

// fromStamp converts a kernel receive timestamp (wall clock) taken before
// now into a time on now's monotonic clock, so that it can be compared with
// other time.Now values whatever the wall clock does.
func fromStamp(now, stamp time.Time) time.Time {
	lag := now.Round(0).Sub(stamp) // wall clock against wall clock
	if lag < 0 || lag > maxStampLag {
		return now
	}
	return now.Add(-lag)
}
