//go:build race

package forwarder

// streamRace: the race detector is on; it makes sync.Pool drop a share of
// what is put back at random, so pooled buffers are allocated again.
const streamRace = true
