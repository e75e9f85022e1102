//go:build race

package ws

// raceEnabled reports whether the race detector is on: it allows at most
// 8128 live goroutines, and slows handshakes several times.
const raceEnabled = true
