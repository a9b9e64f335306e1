//go:build race

package replay_test

// raceEnabled reports whether the race detector is on.
const raceEnabled = true
