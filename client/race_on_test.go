//go:build race

package client

// raceEnabled: this test binary was built with -race, which makes
// sync.Pool drop items at random (allocation counts of code that uses a
// pool then vary).
const raceEnabled = true
