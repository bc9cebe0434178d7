//go:build !race

package forwarder

const streamRace = false
