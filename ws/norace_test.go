//go:build !race

package ws

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
