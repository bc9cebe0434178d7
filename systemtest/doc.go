// Package systemtest holds tests of the forwarders and conductors together,
// in one process, against a real redis-server and an embedded NATS server,
// with devices on real UDP sockets. It has no code of its own: it exists so
// that neither forwarder nor conductor has to import the other, even in
// tests. The same scenarios with separate processes killed by signals are
// in cmd/callrelay.
package systemtest
