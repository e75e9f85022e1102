package concurrency

import (
	"container/heap"
	"maps"
	"math"
	"slices"
	"sync"
)

const (
	// numShards is the number of shards of a Counter, a power of two.
	numShards = 64
	// minRebuild is the fewest keys a shard's map must have held before a
	// shrink rebuilds it: rebuilding a small map saves nothing.
	minRebuild = 64
)

// Entry is one key and the number of slots it holds, as returned by
// [Counter.Top].
type Entry[K comparable] struct {
	Key   K
	Count int
}

// counts is the unlocked core of a Counter: the slot counts of the keys of
// one shard, in a map that holds only counts above zero. Every method
// requires the shard's lock.
type counts[K comparable] struct {
	m     map[K]int32
	total int // sum of all counts
	// peak is the most keys m has held since it was made. Go maps do not
	// give memory back when entries are deleted, so once the keys fall
	// below an eighth of it the map is copied into a smaller one.
	peak int
}

// acquire increments k's count if it is below limit.
func (c *counts[K]) acquire(k K, limit int) bool {
	n := c.m[k]
	if int(n) >= limit {
		return false
	}
	if c.m == nil {
		c.m = make(map[K]int32)
	}
	c.m[k] = n + 1
	c.total++
	c.peak = max(c.peak, len(c.m))
	return true
}

// release decrements k's count, deleting k's entry at zero. It reports
// false, changing nothing, if k holds no count.
func (c *counts[K]) release(k K) bool {
	n, ok := c.m[k]
	if !ok {
		return false
	}
	c.total--
	if n > 1 {
		c.m[k] = n - 1
		return true
	}
	delete(c.m, k)
	if c.peak >= minRebuild && 8*len(c.m) < c.peak {
		c.shrink()
	}
	return true
}

// shrink copies the entries into a map sized for them. A shrink copies
// fewer than peak/8 entries after at least 7·peak/8 deletions, so its cost
// per release is constant.
func (c *counts[K]) shrink() {
	if len(c.m) == 0 {
		c.m = nil
	} else {
		m := make(map[K]int32, len(c.m))
		maps.Copy(m, c.m)
		c.m = m
	}
	c.peak = len(c.m)
}

// shard is one lock and its part of the counts.
type shard[K comparable] struct {
	mu sync.Mutex
	counts[K]
}

// Counter counts connection slots per key. Create one with [New]; the zero
// value is not usable. A Counter is safe for concurrent use.
type Counter[K comparable] struct {
	hash   func(K) uint64
	shards [numShards]shard[K]
}

// New returns an empty Counter that spreads keys over its shards by hash.
// hash must be deterministic (a maphash under a per-process seed is); it
// only chooses a key's shard, so keys whose hashes collide are still
// counted apart. It must not be nil.
func New[K comparable](hash func(K) uint64) *Counter[K] {
	if hash == nil {
		panic("concurrency: New with a nil hash function")
	}
	return &Counter[K]{hash: hash}
}

// lock returns k's shard, locked.
func (c *Counter[K]) lock(k K) *shard[K] {
	s := &c.shards[c.hash(k)%numShards]
	s.mu.Lock()
	return s
}

// Acquire takes a slot for k if k holds fewer than limit slots, and
// reports whether it did. The check and the increment are one step: with
// limit N, exactly N concurrent Acquires of one key succeed. A limit of
// zero or less admits nothing; limits above math.MaxInt32 count as
// math.MaxInt32.
func (c *Counter[K]) Acquire(k K, limit int) bool {
	if limit <= 0 {
		return false
	}
	s := c.lock(k)
	ok := s.acquire(k, min(limit, math.MaxInt32))
	s.mu.Unlock()
	return ok
}

// Release gives back one of k's slots, deleting k's entry when its count
// reaches zero, and reports true. If k holds no slot, Release changes
// nothing and reports false: a count never goes below zero.
func (c *Counter[K]) Release(k K) bool {
	s := c.lock(k)
	ok := s.release(k)
	s.mu.Unlock()
	return ok
}

// Count returns the number of slots k holds.
func (c *Counter[K]) Count(k K) int {
	s := c.lock(k)
	n := s.m[k]
	s.mu.Unlock()
	return int(n)
}

// Len returns the number of keys that hold at least one slot.
func (c *Counter[K]) Len() int { return c.sum(func(s *counts[K]) int { return len(s.m) }) }

// Total returns the number of slots held by all keys together.
func (c *Counter[K]) Total() int { return c.sum(func(s *counts[K]) int { return s.total }) }

// sum adds f over the shards, one shard lock at a time.
func (c *Counter[K]) sum(f func(*counts[K]) int) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += f(&s.counts)
		s.mu.Unlock()
	}
	return n
}

// Top returns the n keys that hold the most slots, most first; it returns
// fewer when fewer keys hold slots, and nil when n <= 0. The order of keys
// with equal counts is unspecified. Top is meant for an inspection page: it
// visits every key, in O(keys · log n) time, one shard lock at a time.
func (c *Counter[K]) Top(n int) []Entry[K] {
	if n <= 0 {
		return nil
	}
	var h minHeap[K]
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for k, count := range s.m {
			h.offer(n, Entry[K]{Key: k, Count: int(count)})
		}
		s.mu.Unlock()
	}
	top := []Entry[K](h)
	slices.SortFunc(top, func(a, b Entry[K]) int { return b.Count - a.Count })
	return top
}

// minHeap keeps the n largest entries seen, the smallest at the root.
type minHeap[K comparable] []Entry[K]

// offer adds e if it is among the n largest seen so far.
func (h *minHeap[K]) offer(n int, e Entry[K]) {
	switch {
	case len(*h) < n:
		heap.Push(h, e)
	case e.Count > (*h)[0].Count:
		(*h)[0] = e
		heap.Fix(h, 0)
	}
}

func (h minHeap[K]) Len() int           { return len(h) }
func (h minHeap[K]) Less(i, j int) bool { return h[i].Count < h[j].Count }
func (h minHeap[K]) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *minHeap[K]) Push(x any)        { *h = append(*h, x.(Entry[K])) }
func (h *minHeap[K]) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
