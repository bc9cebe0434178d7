package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/embedredis"
	"github.com/callrelay/callrelay/internal/natsauth"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// infra is what the demo's forwarders share: an embedded NATS server and a
// Redis (a redis-server from PATH as a child process, else the in-process
// stand-in, which says loudly that it keeps nothing).
type infra struct {
	nats     *server.Server
	users    map[protocol.NATSRole]natsauth.User // each role's nkey
	redisURL string
	kind     string // how Redis runs, for the header line
	closers  []func()
}

func startInfra(log *zap.Logger) (*infra, error) {
	in := &infra{}
	// NATS runs as a deployment's does: each role its own nkey, made for
	// this run, allowed only its subjects (natsauth, protocol.RolePermissions).
	in.users = make(map[protocol.NATSRole]natsauth.User)
	var users []natsauth.User
	for _, r := range protocol.NATSRoles {
		p, err := protocol.RolePermissions(forwarder.DefaultCluster().Subject, r)
		if err != nil {
			return nil, err
		}
		u, err := natsauth.NewUser(string(r), natsauth.Perms(p))
		if err != nil {
			return nil, err
		}
		in.users[r] = u
		users = append(users, u)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		Nkeys: natsauth.ServerUsers(users)})
	if err != nil {
		return nil, fmt.Errorf("demo: embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("demo: embedded NATS did not start")
	}
	in.nats = ns
	in.closers = append(in.closers, func() { ns.Shutdown(); ns.WaitForShutdown() })
	if path, err := exec.LookPath("redis-server"); err == nil {
		if err := in.startRedisServer(path); err == nil {
			return in, nil
		}
		log.Warn("redis-server on PATH did not start; using the in-process stand-in", zap.Error(err))
	}
	er, err := embedredis.Start(log)
	if err != nil {
		in.close()
		return nil, err
	}
	in.redisURL, in.kind = er.URL(), "in-process Redis stand-in (keeps nothing)"
	in.closers = append(in.closers, er.Close)
	return in, nil
}

// startRedisServer runs a throwaway redis-server on a free loopback port.
func (in *infra) startRedisServer(path string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		return err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	url := "redis://127.0.0.1:" + strconv.Itoa(port) + "/0"
	opt, _ := redis.ParseURL(url)
	rc := redis.NewClient(opt)
	defer rc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rc.Ping(ctx).Err()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("redis-server on port %d: %w", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	in.redisURL, in.kind = url, "redis-server "+url
	in.closers = append(in.closers, stop)
	return nil
}

// connectNATS connects as role.
func (in *infra) connectNATS(role protocol.NATSRole) (*nats.Conn, error) {
	o, err := natsauth.Option(in.users[role].Seed)
	if err != nil {
		return nil, err
	}
	return nats.Connect(in.nats.ClientURL(), o)
}

// connect opens a NATS connection as role and a state store client for one
// component; the caller closes both.
func (in *infra) connect(role protocol.NATSRole) (*nats.Conn, *statestore.Redis, error) {
	nc, err := in.connectNATS(role)
	if err != nil {
		return nil, nil, err
	}
	store, err := statestore.OpenRedis(in.redisURL, statestore.Config{})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, store, nil
}

func (in *infra) close() {
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
}
