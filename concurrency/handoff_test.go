package concurrency

import (
	"runtime"
	"testing"

	"github.com/wslimit/wslimit/concurrency/handoff"
)

// BenchmarkCacheLineHandoff measures the machine, not this package: one op
// is one round trip of a cache line between two cores (handoff.RoundTrip).
// It is the floor under every write to state that all cores share (a
// shard's lock, a counter's entry, the global count): in parallel, each
// such line was last written by the other core about half the time.
func BenchmarkCacheLineHandoff(b *testing.B) {
	if runtime.GOMAXPROCS(0) < 2 {
		b.Skip("needs two cores")
	}
	handoff.RoundTrip(b.N)
}
