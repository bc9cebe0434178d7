package main

import (
	"crypto/tls"
	"flag"
	"fmt"
)

// streamOptions are the forwarder's TCP and TLS listeners' flags
// (forwarder.StreamConfig; protocol/README.md section 9).
type streamOptions struct {
	tlsCert, tlsKey string
}

func addStreamFlags(fs *flag.FlagSet, o *forwarderOptions) {
	sc := &o.cfg.Stream
	fs.StringVar(&sc.TCPListen, "tcp-listen", sc.TCPListen, "TCP ip:port for devices that cannot use UDP (RFC 4571 frames); empty: off")
	fs.StringVar(&sc.TLSListen, "tls-listen", sc.TLSListen, "TLS ip:port for devices that reach only 443 (e.g. 0.0.0.0:443; needs --tls-cert and --tls-key); empty: off")
	fs.StringVar(&o.stream.tlsCert, "tls-cert", "", "PEM certificate (chain) of the TLS listener")
	fs.StringVar(&o.stream.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.IntVar(&sc.PerIP, "stream-per-ip", sc.PerIP, "TCP and TLS connections one address may hold (open or handshaking); more are closed at once and counted")
	fs.IntVar(&sc.MaxConns, "stream-max-conns", sc.MaxConns, "TCP and TLS connections in all")
	fs.DurationVar(&sc.WriteTimeout, "stream-write-timeout", sc.WriteTimeout, "close a TCP or TLS connection whose device reads nothing for this long")
	fs.IntVar(&sc.QueueBytes, "stream-queue-bytes", sc.QueueBytes, "bytes queued per TCP or TLS member; over it the oldest video is dropped first, then audio")
}

// loadStreamTLS reads the TLS listener's certificate.
func (o *forwarderOptions) loadStreamTLS() error {
	s := &o.stream
	if s.tlsCert == "" && s.tlsKey == "" {
		return nil
	}
	if s.tlsCert == "" || s.tlsKey == "" {
		return fmt.Errorf("forwarder: --tls-cert and --tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(s.tlsCert, s.tlsKey)
	if err != nil {
		return fmt.Errorf("forwarder: --tls-cert, --tls-key: %w", err)
	}
	o.cfg.Stream.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return nil
}
