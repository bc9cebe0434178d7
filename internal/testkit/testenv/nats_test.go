package testenv

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestNATSPublishSubscribe(t *testing.T) {
	n := NATS(t)
	u, err := url.Parse(n.ClientURL())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", u.Hostname())
	require.NotEqual(t, "4222", u.Port(), "tests must never use the machine's shared NATS")

	nc, err := nats.Connect(n.ClientURL())
	require.NoError(t, err)
	defer nc.Close()

	sub, err := nc.SubscribeSync("call.c1.meta")
	require.NoError(t, err)
	require.NoError(t, nc.Publish("call.c1.meta", []byte("level=42")))
	msg, err := sub.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "level=42", string(msg.Data))
}

// JetStream state lives in the test's store directory, so it survives
// Restart, and clients configured to reconnect find the server again.
func TestNATSRestartKeepsURLAndJetStream(t *testing.T) {
	n := NATS(t)
	nc, err := nats.Connect(n.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	require.NoError(t, err)
	defer nc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "CALLS", Subjects: []string{"calls.>"}})
	require.NoError(t, err)
	ack, err := js.Publish(ctx, "calls.c1", []byte("joined"))
	require.NoError(t, err)
	require.EqualValues(t, 1, ack.Sequence)

	n.Shutdown()
	require.Nil(t, n.Server())
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("client still connected to a shut-down server")
		}
		return nil
	})

	require.NoError(t, n.Restart())
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return errors.New("client has not reconnected: " + nc.Status().String())
		}
		return nil
	})
	stream, err := js.Stream(ctx, "CALLS")
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "stream contents must survive Restart")
}
