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
// A topology is made by New and removed, namespaces, links and emulator,
// when the test ends, also when it fails. Its names carry the test
// process's id, so parallel test binaries never collide, and New removes
// namespaces left by test processes that no longer exist. It needs root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; without them New fails the
// test rather than skipping it.
//
// This is a test tool: it must never be used on a production path.
package regions
