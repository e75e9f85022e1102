package handoff

import (
	"runtime"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	if got := RoundTrip(0); got != 0 {
		t.Fatalf("RoundTrip(0) = %v, want 0", got)
	}
	if runtime.GOMAXPROCS(0) < 2 {
		if got := RoundTrip(10); got != 0 {
			t.Fatalf("one core: RoundTrip = %v, want 0", got)
		}
		return
	}
	// A round trip takes some time. How much depends on the machine: on a
	// loaded one, where the two goroutines rarely run at once, a turn may
	// wait for the operating system to switch threads (milliseconds), so
	// the test takes few turns and sets no upper bound.
	got := RoundTrip(100)
	if got <= 0 {
		t.Fatalf("RoundTrip(100) = %v per round trip", got)
	}
	t.Logf("%v per round trip", got)
}

// BenchmarkCacheLineHandoff measures the machine: one op is one round trip
// of a cache line between two cores (RoundTrip). It is the floor under
// every write to state that all cores share (a shard's lock, a counter's
// entry, the global count): in parallel, each such line was last written
// by the other core about half the time.
func BenchmarkCacheLineHandoff(b *testing.B) {
	if runtime.GOMAXPROCS(0) < 2 {
		b.Skip("needs two cores")
	}
	RoundTrip(b.N)
}
