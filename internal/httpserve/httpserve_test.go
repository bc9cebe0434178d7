package httpserve

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// closedWithin is how long a test waits for the server to close a
// connection it must close; a deadline, not a figure asserted.
const closedWithin = 10 * time.Second

// serve starts a server on a free loopback port with cfg, serving its own
// metrics on /metrics and "ok" elsewhere; it is closed at the test's end.
func serve(t *testing.T, cfg Config) *Server {
	t.Helper()
	mux := http.NewServeMux()
	reg := prometheus.NewRegistry()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s, err := Listen("127.0.0.1:0", cfg)
	require.NoError(t, err)
	reg.MustRegister(s.Collector())
	done := make(chan error, 1)
	go func() { done <- s.Serve(mux) }()
	t.Cleanup(func() {
		require.NoError(t, s.Close())
		require.NoError(t, <-done, "Serve returns nil once closed")
	})
	return s
}

// client is one raw TCP connection speaking HTTP/1.1 with keep-alive.
type client struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, s *Server) *client {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &client{Conn: c, r: bufio.NewReader(c)}
}

// refusedAtOnce dials and waits for the server to close the connection
// (it may be reset before the dial returns).
func refusedAtOnce(s *Server) error {
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return nil
		}
		return err
	}
	defer c.Close()
	return (&client{Conn: c, r: bufio.NewReader(c)}).closedByServer()
}

// get sends one request on the connection and returns the answer's body.
func (c *client) get(path string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(closedWithin)); err != nil {
		return "", err
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// closedByServer waits (up to closedWithin) for the server to close the
// connection: a read that ends in EOF or a reset, not in our deadline.
func (c *client) closedByServer() error {
	if err := c.SetReadDeadline(time.Now().Add(closedWithin)); err != nil {
		return err
	}
	_, err := c.r.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		return errors.New("the server sent a byte instead of closing")
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("still open after %v", closedWithin)
	}
	return nil // io.EOF or a reset: closed
}

// The cap holds whatever clients do: connections over it are closed at
// once and counted; those under it go on being served, kept alive; a slot
// freed is taken by the next connection.
func TestOverCapClosedAtOnceAndCounted(t *testing.T) {
	cfg := Default()
	cfg.MaxConns = 4
	s := serve(t, cfg)

	kept := make([]*client, cfg.MaxConns)
	for i := range kept {
		kept[i] = dial(t, s)
		_, err := kept[i].get("/")
		require.NoError(t, err, "connection %d is under the cap", i)
	}
	for i := range cfg.MaxConns { // as many again: each closed at once
		require.NoError(t, refusedAtOnce(s), "connection %d over the cap", cfg.MaxConns+i)
	}
	require.Equal(t, Stats{Open: 4, Max: 4, Refused: 4}, s.Stats())
	for i, c := range kept { // still alive, still served
		_, err := c.get("/")
		require.NoError(t, err, "kept-alive connection %d", i)
	}
	body, err := kept[0].get("/metrics")
	require.NoError(t, err)
	for _, want := range []string{"callrelay_http_connections 4\n", "callrelay_http_connections_max 4\n",
		"callrelay_http_connections_refused_total 4\n"} {
		require.Contains(t, body, want)
	}

	require.NoError(t, kept[0].Close())
	waitOpen(t, s, 3)
	_, err = dial(t, s).get("/")
	require.NoError(t, err, "the freed slot serves a new connection")
	require.Equal(t, uint64(4), s.Stats().Refused)
}

// A kept-alive connection with no new request is closed after IdleTimeout,
// and gives its slot back.
func TestIdleConnectionClosedAfterIdleTimeout(t *testing.T) {
	cfg := Default()
	cfg.IdleTimeout = 100 * time.Millisecond
	s := serve(t, cfg)
	c := dial(t, s)
	_, err := c.get("/")
	require.NoError(t, err)
	require.NoError(t, c.closedByServer())
	waitOpen(t, s, 0)
}

// A connection that never finishes its headers (silent, or a slow drip) is
// closed after ReadHeaderTimeout.
func TestSilentOrSlowHeadersClosedAfterReadHeaderTimeout(t *testing.T) {
	cfg := Default()
	cfg.ReadHeaderTimeout = 100 * time.Millisecond
	s := serve(t, cfg)
	silent := dial(t, s)
	slow := dial(t, s)
	_, err := io.WriteString(slow, "GET / HTTP/1.1\r\nHost: test\r\nX-Drip: ")
	require.NoError(t, err)
	require.NoError(t, silent.closedByServer(), "silent")
	require.NoError(t, slow.closedByServer(), "headers never ended")
}

// Headers over MaxHeaderBytes are answered 431 and not buffered further.
func TestOversizeHeadersRefused(t *testing.T) {
	cfg := Default()
	cfg.MaxHeaderBytes = 4 << 10
	s := serve(t, cfg)
	c := dial(t, s)
	require.NoError(t, c.SetDeadline(time.Now().Add(closedWithin)))
	_, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: test\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 64<<10))
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Logf("write cut short: %v", err) // the server may close before reading it all
	}
	resp, err := http.ReadResponse(c.r, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	// Read until the server closes (EOF, or a reset for the header it left
	// unread); it lingers a moment first (net/http's reset avoidance).
	_, _ = io.ReadAll(resp.Body)
	waitOpen(t, s, 0)
}

// waitOpen waits until the server counts n connections open.
func waitOpen(t *testing.T, s *Server, n int) {
	t.Helper()
	testenv.CheckFor(t, closedWithin, 5*time.Millisecond, func() error {
		if st := s.Stats(); st.Open != n {
			return fmt.Errorf("%d open, want %d", st.Open, n)
		}
		return nil
	})
}

func TestConfigValidateSaysWhatToFix(t *testing.T) {
	require.NoError(t, Default().Validate())
	bad := Default()
	bad.IdleTimeout, bad.MaxConns, bad.MaxHeaderBytes, bad.Logger = 0, 0, 10, nil
	err := bad.Validate()
	require.Error(t, err)
	for _, want := range []string{"every timeout must be positive", "max connections 0", "max header bytes 10", "no Logger"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = Listen("127.0.0.1:0", bad)
	require.Error(t, err, "Listen checks the config")
}

// With MaxConnsPerSource, one host cannot take every slot: its
// connections over its own cap are closed at once and counted, while
// another source is still served (loopback 127.0.0.2 stands for it).
func TestPerSourceCapLeavesRoomForOthers(t *testing.T) {
	cfg := Default()
	cfg.MaxConns, cfg.MaxConnsPerSource = 8, 2
	s := serve(t, cfg)
	first := dial(t, s)
	_, err := first.get("/")
	require.NoError(t, err)
	require.NoError(t, first.Close())
	waitOpen(t, s, 0) // its slot is the source's again
	for i := range 2 {
		_, err := dial(t, s).get("/")
		require.NoError(t, err, "connection %d is under the source's cap", i)
	}
	for i := range 4 {
		require.NoError(t, refusedAtOnce(s), "connection %d from the same source", 2+i)
	}
	require.Equal(t, Stats{Open: 2, Max: 8, Refused: 4}, s.Stats())

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	_, err = (&client{Conn: c, r: bufio.NewReader(c)}).get("/")
	require.NoError(t, err, "another source is served")
	waitOpen(t, s, 3)
	require.Equal(t, uint64(4), s.Stats().Refused)
}
