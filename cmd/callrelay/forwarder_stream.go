package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/callrelay/callrelay/forwarder"
)

// streamOptions are the forwarder's TCP and TLS listeners' flags
// (forwarder.StreamConfig; protocol/README.md section 9).
type streamOptions struct {
	tlsCert, tlsKey string
	reloadEvery     time.Duration
	certs           *forwarder.CertReloader // with --tls-cert
	advertise       [2][2]string            // --tcp-advertise(6), --tls-advertise(6)
}

func addStreamFlags(fs *flag.FlagSet, o *forwarderOptions) {
	sc := &o.cfg.Stream
	fs.StringVar(&sc.TCPListen, "tcp-listen", sc.TCPListen, "TCP ip:port for devices that cannot use UDP (RFC 4571 frames); empty: off")
	fs.StringVar(&sc.TLSListen, "tls-listen", sc.TLSListen, "TLS ip:port for devices that reach only 443 (e.g. 0.0.0.0:443; needs --tls-cert and --tls-key); empty: off")
	adv := &o.stream.advertise
	fs.StringVar(&adv[0][0], "tcp-advertise", "", "the TCP listener's ip:port as devices reach it (behind a load balancer or NAT), told to the cluster for moves; empty: the bound one (an unspecified one: the --media-advertise address with the listener's port)")
	fs.StringVar(&adv[0][1], "tcp-advertise6", "", "the TCP listener's IPv6 [ip]:port as devices reach it, beside --tcp-advertise; empty: derived from the bound one and --media-advertise6")
	fs.StringVar(&adv[1][0], "tls-advertise", "", "the TLS listener's ip:port as devices reach it (e.g. a load balancer's 443); empty: the bound one (an unspecified one: the --media-advertise address with the listener's port)")
	fs.StringVar(&adv[1][1], "tls-advertise6", "", "the TLS listener's IPv6 [ip]:port as devices reach it, beside --tls-advertise; empty: derived from the bound one and --media-advertise6")
	fs.StringVar(&o.stream.tlsCert, "tls-cert", "", "PEM certificate (chain) of the TLS listener")
	fs.StringVar(&o.stream.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.DurationVar(&o.stream.reloadEvery, "tls-reload-every", time.Minute, "read --tls-cert and --tls-key again this often and use them for new TLS connections when they changed (also on SIGHUP); a pair that does not load is refused, logged and counted, and the one in use stays; 0: on SIGHUP only")
	fs.IntVar(&sc.PerIP, "stream-per-ip", sc.PerIP, "TCP and TLS connections one address may hold (open or handshaking); more are closed at once and counted")
	fs.IntVar(&sc.MaxConns, "stream-max-conns", sc.MaxConns, "TCP and TLS connections in all")
	fs.DurationVar(&sc.WriteTimeout, "stream-write-timeout", sc.WriteTimeout, "close a TCP or TLS connection whose device reads nothing for this long")
	fs.IntVar(&sc.QueueBytes, "stream-queue-bytes", sc.QueueBytes, "bytes queued per TCP or TLS member; over it the oldest video is dropped first, then audio")
	fs.BoolVar(&sc.Announce, "stream-announce", sc.Announce, "tell the other forwarders the TCP and TLS listeners in the heartbeat, so members on TCP or TLS are moved (drain, moves) over their own transport; set false while a cluster still runs forwarders older than this flag, which reject such heartbeats")
}

// parseStreamAdvertise puts the --*-advertise* flags into the config
// (checked by forwarder.StreamConfig: each needs its listener and family).
func (o *forwarderOptions) parseStreamAdvertise() error {
	names := [2][2]string{{"--tcp-advertise", "--tcp-advertise6"}, {"--tls-advertise", "--tls-advertise6"}}
	for t, pair := range o.stream.advertise {
		for fam, v := range pair {
			dst := &o.cfg.Stream.Advertise[t][fam]
			if err := parseAddr(names[t][fam], v, dst); err != nil {
				return err
			}
			*dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		}
	}
	return nil
}

// loadStreamTLS reads the TLS listener's certificate (reloaded later by
// watchStreamTLS).
func (o *forwarderOptions) loadStreamTLS() error {
	s := &o.stream
	if s.tlsCert == "" && s.tlsKey == "" {
		return nil
	}
	if s.tlsCert == "" || s.tlsKey == "" {
		return fmt.Errorf("forwarder: --tls-cert and --tls-key go together")
	}
	certs, err := forwarder.NewCertReloader(s.tlsCert, s.tlsKey, o.cfg.Logger)
	if err != nil {
		return fmt.Errorf("forwarder: --tls-cert, --tls-key: %w", err)
	}
	s.certs, o.cfg.Stream.TLS = certs, certs.TLSConfig()
	return nil
}

// watchStreamTLS reloads the TLS certificate on SIGHUP and every
// --tls-reload-every until ctx ends. Without --tls-cert it does nothing, and
// SIGHUP keeps its default.
func (o *forwarderOptions) watchStreamTLS(ctx context.Context) {
	certs := o.stream.certs
	if certs == nil {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		certs.Watch(ctx, o.stream.reloadEvery, hup)
	}()
}
