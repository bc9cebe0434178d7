package logging

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
)

func TestLevels(t *testing.T) {
	for _, build := range []func(string) (interface{ Core() zapcore.Core }, error){
		func(l string) (interface{ Core() zapcore.Core }, error) { return New(l) },
		func(l string) (interface{ Core() zapcore.Core }, error) { return NewConsole(l) },
	} {
		log, err := build("warn")
		require.NoError(t, err)
		require.False(t, log.Core().Enabled(zapcore.InfoLevel))
		require.True(t, log.Core().Enabled(zapcore.ErrorLevel))
		_, err = build("loud")
		require.ErrorContains(t, err, "want debug, info, warn or error")
	}
}
