package testenv

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// A message published on one node reaches a subscriber on another, and a
// client pinned to a node that is killed reconnects to a survivor and keeps
// its subscriptions.
func TestNATSClusterRoutesAndFailover(t *testing.T) {
	c := NATSCluster(t, 3)
	require.Equal(t, 3, c.Len())
	require.Len(t, strings.Split(c.ClientURLs(), ","), 3)
	for i := range 3 {
		require.Equal(t, 2, c.RoutedPeers(i), "node %d", i)
		require.GreaterOrEqual(t, c.Server(i).NumRoutes(), 2, "node %d", i)
		require.NotContains(t, c.ClientURL(i), ":4222", "tests must never use the machine's shared NATS")
	}

	pinned := func(i int) *nats.Conn {
		urls := []string{c.ClientURL(i)}
		for j := range c.Len() {
			if j != i {
				urls = append(urls, c.ClientURL(j))
			}
		}
		nc, err := nats.Connect(strings.Join(urls, ","), nats.DontRandomize(),
			nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		require.Equal(t, c.ClientURL(i), nc.ConnectedUrl())
		return nc
	}
	pub, sub := pinned(0), pinned(2)
	s, err := sub.SubscribeSync("call.c1.meta")
	require.NoError(t, err)
	require.NoError(t, sub.Flush())
	// Interest crosses the route asynchronously.
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		require.NoError(t, pub.Publish("call.c1.meta", []byte("x")))
		if _, err := s.NextMsg(20 * time.Millisecond); err != nil {
			return fmt.Errorf("no message across the route: %w", err)
		}
		return nil
	})

	c.Shutdown(2)
	require.Nil(t, c.Server(2))
	require.Zero(t, c.RoutedPeers(2))
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := c.RoutedPeers(0); got != 1 {
			return fmt.Errorf("node 0 still routed to %d nodes", got)
		}
		return nil
	})
	c.Shutdown(2) // idempotent
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !sub.IsConnected() || sub.ConnectedUrl() == c.ClientURL(2) {
			return errors.New("subscriber not reconnected to a survivor: " + sub.Status().String())
		}
		return nil
	})
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		require.NoError(t, pub.Publish("call.c1.meta", []byte("after")))
		m, err := s.NextMsg(20 * time.Millisecond)
		if err != nil {
			return fmt.Errorf("no message after failover: %w", err)
		}
		if string(m.Data) != "after" {
			return errors.New("an old message")
		}
		return nil
	})
}
