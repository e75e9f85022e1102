package concurrency

import (
	"container/heap"
	"math"
	"slices"
	"sync"
)

const (
	// numShards is the number of shards of a Counter, a power of two.
	numShards = 64
	// cacheLine is the padding between the hot fields of neighbouring
	// shards: at least one cache line, so two cores working on two shards
	// do not invalidate each other's line.
	cacheLine = 64
	// shrinkMin is the high-water mark below which a shard's map is never
	// copied to shrink it: small maps are not worth the copy.
	shrinkMin = 1024
)

// Entry is one key and the number of slots it holds, as returned by
// [Counter.Top].
type Entry[K comparable] struct {
	Key   K
	Count int
}

// counts is the unlocked core of a Counter: the slot counts of the keys of
// one shard. Every method requires the shard's lock.
//
// Entries are found by the key's 64-bit hash (the same hash that picked the
// shard), which keeps the map's own hashing cheap; the key is stored beside
// its count and compared, so counts stay exact per key. The rare key whose
// hash collides with a different key already present is counted in coll,
// keyed by the key itself.
type counts[K comparable] struct {
	m     map[uint64]entry[K] // only counts > 0 are stored
	coll  map[K]int32         // colliding keys; nil until the first collision
	total int                 // sum of all counts
	peak  int                 // the largest len(m) since m was made
}

type entry[K comparable] struct {
	k K
	n int32
}

// acquire increments k's count if it is below limit.
func (c *counts[K]) acquire(k K, h uint64, limit int) bool {
	if len(c.coll) > 0 {
		if n, ok := c.coll[k]; ok {
			if int(n) >= limit {
				return false
			}
			c.coll[k] = n + 1
			c.total++
			return true
		}
	}
	e, ok := c.m[h]
	switch {
	case !ok:
		c.m[h] = entry[K]{k: k, n: 1}
		if len(c.m) > c.peak {
			c.peak = len(c.m)
		}
	case e.k == k:
		if int(e.n) >= limit {
			return false
		}
		e.n++
		c.m[h] = e
	default: // another key holds this hash: count k on its own
		if c.coll == nil {
			c.coll = make(map[K]int32)
		}
		c.coll[k] = 1
	}
	c.total++
	return true
}

// release decrements k's count, deleting the entry at zero. It reports
// false, changing nothing, if k holds no count.
func (c *counts[K]) release(k K, h uint64) bool {
	if e, ok := c.m[h]; ok && e.k == k {
		c.total--
		if e.n > 1 {
			e.n--
			c.m[h] = e
			return true
		}
		delete(c.m, h)
		if c.peak >= shrinkMin && len(c.m) <= c.peak/4 {
			c.shrink()
		}
		return true
	}
	n, ok := c.coll[k]
	if !ok {
		return false
	}
	c.total--
	if n > 1 {
		c.coll[k] = n - 1
	} else {
		delete(c.coll, k)
	}
	return true
}

// count returns k's count.
func (c *counts[K]) count(k K, h uint64) int {
	if e, ok := c.m[h]; ok && e.k == k {
		return int(e.n)
	}
	return int(c.coll[k])
}

// shrink copies m into a map sized for its current length. Go maps keep
// their storage when entries are deleted; without this, a shard would hold
// memory for the most keys it ever had, not for the keys it has.
func (c *counts[K]) shrink() {
	m := make(map[uint64]entry[K], len(c.m))
	for h, e := range c.m {
		m[h] = e
	}
	c.m = m
	c.peak = len(m)
	if len(c.coll) == 0 {
		c.coll = nil
	}
}

// shard is one lock and its part of the counts.
type shard[K comparable] struct {
	mu sync.Mutex
	counts[K]
	_ [cacheLine]byte
}

// Counter counts connection slots per key. Create one with [New]; the zero
// value is not usable. A Counter is safe for concurrent use.
type Counter[K comparable] struct {
	hash   func(K) uint64
	shards [numShards]shard[K]
}

// New returns an empty Counter that spreads keys over its shards by hash.
// hash must be deterministic and well mixed in its low bits (a maphash
// under a per-process seed is); it must not be nil.
func New[K comparable](hash func(K) uint64) *Counter[K] {
	if hash == nil {
		panic("concurrency: New with a nil hash function")
	}
	c := &Counter[K]{hash: hash}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]entry[K])
	}
	return c
}

func (c *Counter[K]) shard(k K) (*shard[K], uint64) {
	h := c.hash(k)
	return &c.shards[h&(numShards-1)], h
}

// Acquire takes a slot for k if k holds fewer than limit slots, and
// reports whether it did. The check and the increment are one step: with
// limit N, exactly N concurrent Acquires of one key succeed. A limit of
// zero or less admits nothing; limits above math.MaxInt32 count as
// math.MaxInt32.
func (c *Counter[K]) Acquire(k K, limit int) bool {
	return c.AcquireHash(k, c.hash(k), limit)
}

// AcquireHash is Acquire for a caller that already holds k's hash by the
// Counter's hash function; h must be that hash.
func (c *Counter[K]) AcquireHash(k K, h uint64, limit int) bool {
	if limit <= 0 {
		return false
	}
	limit = min(limit, math.MaxInt32)
	s := &c.shards[h&(numShards-1)]
	s.mu.Lock()
	ok := s.acquire(k, h, limit)
	s.mu.Unlock()
	return ok
}

// Release gives back one of k's slots, deleting k's entry when its count
// reaches zero, and reports true. If k holds no slot, Release changes
// nothing and reports false: a count never goes below zero.
func (c *Counter[K]) Release(k K) bool {
	return c.ReleaseHash(k, c.hash(k))
}

// ReleaseHash is Release for a caller that already holds k's hash by the
// Counter's hash function; h must be that hash.
func (c *Counter[K]) ReleaseHash(k K, h uint64) bool {
	s := &c.shards[h&(numShards-1)]
	s.mu.Lock()
	ok := s.release(k, h)
	s.mu.Unlock()
	return ok
}

// Count returns the number of slots k holds.
func (c *Counter[K]) Count(k K) int {
	s, h := c.shard(k)
	s.mu.Lock()
	n := s.count(k, h)
	s.mu.Unlock()
	return n
}

// Len returns the number of keys that hold at least one slot.
func (c *Counter[K]) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m) + len(s.coll)
		s.mu.Unlock()
	}
	return n
}

// Total returns the number of slots held by all keys together.
func (c *Counter[K]) Total() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.total
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
		for _, en := range s.m {
			h.offer(n, Entry[K]{Key: en.k, Count: int(en.n)})
		}
		for k, cnt := range s.coll {
			h.offer(n, Entry[K]{Key: k, Count: int(cnt)})
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
