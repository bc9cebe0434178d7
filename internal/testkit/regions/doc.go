// Package regions builds a multi-region network on one Linux machine for
// tests: a network namespace per region (forwarders) and per city
// (devices), each joined by a veth pair to a "wan" namespace that routes
// between them, where every packet from one site to another passes through
// a userspace link emulator (linkem.Router on a TUN device, chosen by
// policy routing) that delays, jitters and drops it as the path between
// the two sites says: a city's access link, then the link between the two
// regions, then the other city's access link. The kernel here has no
// netem, so the emulation is in userspace.
//
// Sockets are bound in a site by creating them inside Do, which runs a
// function on an OS thread moved into the site's namespace; anything that
// opens sockets from other goroutines (the client library's multi-connect)
// must instead run as a process in the namespace (Netns and `ip netns
// exec`).
//
// A city may be multi-homed (Site.Direct: links of its own to regions
// other than its home), and SetAccess changes one of a city's links mid-
// test, as SetLink does a link between regions.
//
// For the tests of several packages it also has: Env (Redis, NATS and the
// keys a region test's forwarders share, on the host's loopback or, with
// NewEnvIn, as redis-server and nats-server processes in a region's
// namespace, every client then dialling from its own site: Dial,
// NATSDialer, RedisDialer), StartForwarder (a forwarder whose sockets
// are bound in its region's namespace), CityDevice (a device speaking the
// wire protocol by hand from one socket in a city) and Device (the client
// library in a city, as a process: StartDevice, DeviceMain).
//
// A topology is made by New and removed, namespaces, links and emulator,
// when the test ends, also when it fails. Its names carry the test
// process's id, so parallel test binaries never collide, and New removes
// namespaces left by test processes that no longer exist. It needs root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; without them New fails the
// test rather than skipping it.
//
// This is a test tool: it must never be used on a production path.
package regions
