// Package handoff measures the machine rather than wslimit: what it costs
// to move one cache line from one core to another and back. Benchmarks of
// code that shares state between cores report it beside their figures,
// because on a virtual machine it depends on where the host placed the
// cores and can change from one second to the next (docs/benchmarks.md).
package handoff

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// BenchTurns is how many round trips a benchmark spends measuring the
// handoff beside a parallel run: 2–8 ms on the machines we measure.
const BenchTurns = 20_000

// RoundTrip has two goroutines take n turns each at advancing one shared
// counter, each spinning until the other has written, and returns the time
// per round trip (two handoffs of the counter's cache line). It needs two
// cores (GOMAXPROCS ≥ 2) to mean anything: with one, the goroutines take
// turns through the scheduler instead and it returns 0. Bounded: n turns
// each, nothing else.
func RoundTrip(n int) time.Duration {
	if runtime.GOMAXPROCS(0) < 2 || n <= 0 {
		return 0
	}
	var turn atomic.Int64
	end := 2 * int64(n)
	var wg sync.WaitGroup
	start := time.Now()
	for side := range int64(2) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				t := turn.Load()
				if t >= end {
					return
				}
				if t%2 == side {
					turn.Store(t + 1)
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start) / time.Duration(n)
}
