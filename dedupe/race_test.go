//go:build race

package dedupe

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts are not asserted.
const raceEnabled = true
