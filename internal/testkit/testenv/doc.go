// Package testenv starts the real servers that callrelay's tests talk to:
// a redis-server process on a free loopback port and an embedded nats-server
// with JetStream, each private to one test and torn down by t.Cleanup. It
// also provides CheckFor, the poll-with-deadline helper that integration
// tests use instead of sleeping.
//
// testenv is test-only: import it from _test.go files, never from code that
// ships in a binary. It never touches shared servers (a Redis on :6379 or a
// NATS on :4222 that happen to run on the machine); every call starts its own.
//
// A missing redis-server is a test failure, not a skip, so that a machine
// without it cannot report green; `make deps` installs it.
package testenv
