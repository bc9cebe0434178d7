package loadtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Service is a server that chaos down actions take down and bring back:
// Down stops it, so that its clients find their connections refused or
// reset (a crash, or a maintenance stop: unlike a stop action, which
// leaves a hung process holding its connections); Up starts it again.
// Either may be a server the caller runs in its own process (an embedded
// NATS, a redis-server it started) or a command (CommandService). They are
// called one at a time from the chaos goroutine, bounded by their ctx
// (serviceTimeout), and an error is recorded in the action's Event.
type Service struct {
	Down func(ctx context.Context) error
	Up   func(ctx context.Context) error
}

// serviceTimeout bounds one Service.Down or Service.Up.
const serviceTimeout = 30 * time.Second

// hookOutput bounds how much of a failed command's output its error
// quotes.
const hookOutput = 512

// CommandService is a Service whose Down and Up run shell commands
// (/bin/sh -c): "systemctl stop redis-server", "docker start nats-1", a
// script of the operator's. Each runs with CALLRELAY_CHAOS_TARGET set to
// name and CALLRELAY_CHAOS_ACTION to "down" or "up", in its own process
// group, which is killed when the command outlives its context; a
// non-zero exit is an error quoting the end of its output.
func CommandService(name, down, up string) Service {
	return Service{
		Down: func(ctx context.Context) error { return runHook(ctx, name, ChaosDown, down) },
		Up:   func(ctx context.Context) error { return runHook(ctx, name, ChaosUp, up) },
	}
}

// runHook runs one command of a CommandService.
func runHook(ctx context.Context, name, action, command string) error {
	if strings.TrimSpace(command) == "" {
		return fmt.Errorf("loadtest: no %s command for %s", action, name)
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), "CALLRELAY_CHAOS_TARGET="+name, "CALLRELAY_CHAOS_ACTION="+action)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ownProcessGroup(cmd)
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	tail := strings.TrimSpace(out.String())
	if len(tail) > hookOutput {
		tail = "…" + tail[len(tail)-hookOutput:]
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("did not finish within %v: %w", serviceTimeout, err)
	}
	if tail != "" {
		return fmt.Errorf("%s %s: %w: %s", action, name, err, tail)
	}
	return fmt.Errorf("%s %s: %w", action, name, err)
}
