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
// It is an open-addressing table with linear probing: an entry holds the
// key, its 64-bit hash (the hash that picked the shard) and its count, and
// is found by hash and then compared by key, so counts stay exact per key
// even when two keys' hashes collide (they take neighbouring slots). A
// count of zero marks a free slot; a slot is freed by backward-shift
// deletion, so there are no tombstones and a lookup stops at the first
// free slot. The table doubles when three quarters of it are in use and
// halves when less than an eighth is, so its memory follows the keys it
// holds, not the most it ever held.
type counts[K comparable] struct {
	slots []entry[K] // nil, or a power-of-two number of slots
	used  int        // slots holding a key
	total int        // sum of all counts
}

type entry[K comparable] struct {
	k K
	h uint64
	n int32 // 0: a free slot
}

const (
	// minSlots is a shard table's smallest size once it holds a key.
	minSlots = 8
	// shardBits is how many low bits of a hash choose the shard; a shard's
	// table indexes by the bits above them.
	shardBits = 6
)

// home is the slot where a lookup for hash h starts.
func (c *counts[K]) home(h uint64) int { return int(h>>shardBits) & (len(c.slots) - 1) }

// find returns k's slot and true, or the free slot where k would go and
// false. The table must have at least one free slot.
func (c *counts[K]) find(k K, h uint64) (int, bool) {
	mask := len(c.slots) - 1
	for i := c.home(h); ; i = (i + 1) & mask {
		e := &c.slots[i]
		if e.n == 0 {
			return i, false
		}
		if e.h == h && e.k == k {
			return i, true
		}
	}
}

// acquire increments k's count if it is below limit.
func (c *counts[K]) acquire(k K, h uint64, limit int) bool {
	if c.slots == nil {
		c.resize(minSlots)
	}
	i, ok := c.find(k, h)
	if ok {
		e := &c.slots[i]
		if int(e.n) >= limit {
			return false
		}
		e.n++
		c.total++
		return true
	}
	if 4*(c.used+1) > 3*len(c.slots) {
		c.resize(2 * len(c.slots))
		i, _ = c.find(k, h)
	}
	c.slots[i] = entry[K]{k: k, h: h, n: 1}
	c.used++
	c.total++
	return true
}

// release decrements k's count, freeing its slot at zero. It reports
// false, changing nothing, if k holds no count.
func (c *counts[K]) release(k K, h uint64) bool {
	if c.used == 0 {
		return false
	}
	i, ok := c.find(k, h)
	if !ok {
		return false
	}
	c.total--
	if c.slots[i].n > 1 {
		c.slots[i].n--
		return true
	}
	c.remove(i)
	if len(c.slots) > minSlots && 8*c.used < len(c.slots) {
		c.resize(len(c.slots) / 2)
	}
	return true
}

// remove frees slot i by backward-shift deletion: each later entry of the
// probe run whose home is not cyclically within (i, j] moves into the hole,
// which keeps every entry reachable from its home without tombstones.
func (c *counts[K]) remove(i int) {
	mask := len(c.slots) - 1
	for j := (i + 1) & mask; c.slots[j].n != 0; j = (j + 1) & mask {
		home := c.home(c.slots[j].h)
		if (j-home)&mask >= (j-i)&mask {
			c.slots[i] = c.slots[j]
			i = j
		}
	}
	c.slots[i] = entry[K]{} // zero: also drops the key's references
	c.used--
}

// count returns k's count.
func (c *counts[K]) count(k K, h uint64) int {
	if c.used == 0 {
		return 0
	}
	if i, ok := c.find(k, h); ok {
		return int(c.slots[i].n)
	}
	return 0
}

// resize rehashes the entries into a table of size slots (a power of two
// larger than the entries in use).
func (c *counts[K]) resize(size int) {
	old := c.slots
	c.slots = make([]entry[K], size)
	for _, e := range old {
		if e.n != 0 {
			i, _ := c.find(e.k, e.h)
			c.slots[i] = e
		}
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
	return &Counter[K]{hash: hash}
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
func (c *Counter[K]) Len() int { return c.sum(func(s *counts[K]) int { return s.used }) }

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
		for _, en := range s.slots {
			if en.n != 0 {
				h.offer(n, Entry[K]{Key: en.k, Count: int(en.n)})
			}
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
