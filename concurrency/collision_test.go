package concurrency

import (
	"sync"
	"testing"
)

// TestHashCollisionsStayExact: keys are sharded by hash, but keys whose hashes
// collide are still counted separately and exactly.
func TestHashCollisionsStayExact(t *testing.T) {
	c := New(func(int) uint64 { return 42 }) // every key collides
	const keys, limit = 5, 3
	for k := 0; k < keys; k++ {
		for i := 0; i < limit; i++ {
			if !c.Acquire(k, limit) {
				t.Fatalf("key %d slot %d refused", k, i)
			}
		}
		if c.Acquire(k, limit) {
			t.Fatalf("key %d admitted over its cap", k)
		}
	}
	for k := 0; k < keys; k++ {
		if got := c.Count(k); got != limit {
			t.Errorf("Count(%d) = %d, want %d", k, got, limit)
		}
	}
	if got, want := c.Len(), keys; got != want {
		t.Errorf("Len = %d, want %d", got, want)
	}
	if got, want := c.Total(), keys*limit; got != want {
		t.Errorf("Total = %d, want %d", got, want)
	}
	if top := c.Top(keys); len(top) != keys {
		t.Errorf("Top = %v, want %d entries", top, keys)
	}
	// Free the first of the colliding keys: the others keep their counts,
	// and a new key with the same hash is counted on its own.
	for i := 0; i < limit; i++ {
		if !c.Release(0) {
			t.Fatal("release of key 0 failed")
		}
	}
	if c.Release(0) {
		t.Fatal("key 0 released below zero")
	}
	for k := 1; k < keys; k++ {
		if got := c.Count(k); got != limit {
			t.Errorf("after key 0 left: Count(%d) = %d, want %d", k, got, limit)
		}
		if c.Acquire(k, limit) {
			t.Errorf("key %d admitted over its cap after key 0 left", k)
		}
	}
	if !c.Acquire(99, 1) || c.Acquire(99, 1) {
		t.Error("new key sharing the hash: want exactly one slot under limit 1")
	}
	for k := 1; k < keys; k++ {
		for i := 0; i < limit; i++ {
			if !c.Release(k) {
				t.Fatalf("release of key %d failed", k)
			}
		}
	}
	c.Release(99)
	if c.Len() != 0 || c.Total() != 0 {
		t.Errorf("after releasing everything: Len %d Total %d", c.Len(), c.Total())
	}
}

func TestHashCollisionsConcurrent(t *testing.T) {
	c := New(func(k int) uint64 { return uint64(k % 2) }) // keys 0,2,4.. collide, as do 1,3,5..
	const keys, limit, tries = 8, 4, 20
	var wg sync.WaitGroup
	got := make([]int, keys)
	var mu sync.Mutex
	for k := 0; k < keys; k++ {
		for i := 0; i < tries; i++ {
			wg.Add(1)
			go func(k int) {
				defer wg.Done()
				if c.Acquire(k, limit) {
					mu.Lock()
					got[k]++
					mu.Unlock()
				}
			}(k)
		}
	}
	wg.Wait()
	for k, n := range got {
		if n != limit {
			t.Errorf("key %d: %d admitted, want exactly %d", k, n, limit)
		}
	}
}
