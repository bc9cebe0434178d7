package linkem

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFromStamp(t *testing.T) {
	now := time.Now() // carries a monotonic reading
	wall := now.Round(0)
	for _, tc := range []struct {
		name  string
		stamp time.Time
		want  time.Duration // before now
	}{
		{"recent", wall.Add(-5 * time.Millisecond), 5 * time.Millisecond},
		{"same instant", wall, 0},
		{"in the future: clock stepped back", wall.Add(time.Second), 0},
		{"too old: clock stepped forward", wall.Add(-2 * maxStampLag), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromStamp(now, tc.stamp)
			require.Equal(t, tc.want, now.Sub(got))
			require.NotEqual(t, got.Round(0), got, "keeps the monotonic reading")
		})
	}
}
