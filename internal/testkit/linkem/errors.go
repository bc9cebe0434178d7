package linkem

import "errors"

var (
	// ErrBadServer is returned by New for a server address that is not a
	// valid address with a non-zero port.
	ErrBadServer = errors.New("linkem: server address must be an IP address with a non-zero port")
	// ErrNotLoopback is returned by New for a server that is not on
	// loopback: the link only ever relays between local sockets.
	ErrNotLoopback = errors.New("linkem: server address is not a loopback address")
)
