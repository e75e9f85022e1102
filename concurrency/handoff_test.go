package concurrency

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkCacheLineHandoff measures the machine, not this package: what
// it costs to move one cache line from one core to another and back. Two
// goroutines take turns advancing one counter, each waiting (spinning)
// until the other has written; one op is one round trip, two handoffs.
// It is the floor under every write to state that all cores share (a
// shard's lock, a counter's entry, the global count): in parallel, each
// such line was last written by the other core about half the time.
func BenchmarkCacheLineHandoff(b *testing.B) {
	if runtime.GOMAXPROCS(0) < 2 {
		b.Skip("needs two cores")
	}
	var turn atomic.Int64
	end := 2 * int64(b.N)
	var wg sync.WaitGroup
	for side := range int64(2) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := turn.Load()
				if n >= end {
					return
				}
				if n%2 == side {
					turn.Store(n + 1)
				}
			}
		}()
	}
	wg.Wait()
	if got := turn.Load(); got != end {
		b.Fatalf("turns: %d, want %d", got, end)
	}
}
