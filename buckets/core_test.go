package buckets

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// This file tests core, the LRU of one shard, against its invariants and
// against the state it held one step before.

// snapshot is a core's buckets at one step: their keys from least to most
// recently used, and a copy of each bucket with its address.
type snapshot struct {
	order []uint64
	vals  map[uint64]bucket
	ptrs  map[uint64]*bucket
}

// checkCore fails unless c holds at most its capacity, every key maps to
// its own bucket, and, when ordered is set, the buckets run from least to
// most recently updated (true of evict mode when every take updates the
// bucket's time; refuse mode moves the buckets it looks at). It returns
// c's snapshot.
func checkCore(t *testing.T, c *core[uint64], ordered bool) snapshot {
	t.Helper()
	keys, bs := c.lru.Keys(), c.lru.Values()
	if len(keys) > c.capacity || c.lru.Len() != len(keys) {
		t.Fatalf("%d buckets (Len %d), capacity %d", len(keys), c.lru.Len(), c.capacity)
	}
	s := snapshot{order: keys, vals: map[uint64]bucket{}, ptrs: map[uint64]*bucket{}}
	seen := map[*bucket]bool{}
	for i, k := range keys {
		if b, ok := c.lru.Peek(k); !ok || b != bs[i] {
			t.Fatalf("key %d: Peek gives %p, %v; the list holds %p", k, b, ok, bs[i])
		}
		if seen[bs[i]] {
			t.Fatalf("key %d shares its bucket", k)
		}
		seen[bs[i]] = true
		if ordered && i > 0 && bs[i-1].last > bs[i].last {
			t.Fatalf("key %d (updated at %d) after key %d (updated at %d)", k, bs[i].last, keys[i-1], bs[i-1].last)
		}
		s.vals[k], s.ptrs[k] = *bs[i], bs[i]
	}
	return s
}

// rotated reports whether after is before with its first m keys moved to
// the end, for some m of at most refuseLook.
func rotated(before, after []uint64) bool {
	for m := range refuseLook + 1 {
		j := m % max(len(before), 1)
		if slices.Equal(after, append(slices.Clone(before[j:]), before[:j]...)) {
			return true
		}
	}
	return false
}

// TestCoreChurn drives a small core with Reserves of random keys (more
// keys than its capacity), Cancels and resizes, and checks after each
// step, against the step before: the core is consistent; a hit never drops
// a bucket; a new key drops at most one other, only when the shard is
// full, counted as an eviction exactly when that one had not refilled; in
// evict mode that one is the least recently used; refuse mode never drops
// a bucket that has not refilled and looks at no more than refuseLook;
// every other bucket keeps its fields; the reserved bucket becomes the most
// recently used.
func TestCoreChurn(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprint("refuse=", refuse), func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			c := newCore[uint64](100, 0, refuse)
			g := &guard{epoch: t0}
			now := int64(0)
			pool := make([]uint64, 300)
			for i := range pool {
				pool[i] = r.Uint64()
			}
			var res []Reservation
			var dropped, refused int
			for step := range 30_000 {
				before := checkCore(t, &c, !refuse)
				now += r.Int64N(int64(50 * time.Millisecond))
				switch op := r.IntN(20); {
				case op == 0:
					checkResize(t, step, &c, before, 1+r.IntN(150))
					continue
				case op < 4 && len(res) > 0:
					k := r.IntN(len(res))
					rv := res[k]
					res = slices.Delete(res, k, k+1)
					was := *rv.b
					rv.Cancel(t0.Add(time.Duration(rv.at)))
					// A lowered burst may leave more tokens than the burst
					// until the next take; a Cancel never adds above it.
					if rv.b.tokens < was.tokens || rv.b.tokens > max(was.tokens, float64(rv.b.burst)) || rv.b.last != was.last {
						t.Fatalf("step %d: cancel took %+v to %+v", step, was, *rv.b)
					}
					continue
				}
				k := pool[r.IntN(len(pool))]
				limit, burst := rate.Limit(1+r.IntN(20)), int32(1+r.IntN(3))
				_, had := before.vals[k]
				full := len(before.order) == c.capacity
				evictions := c.evictions
				at, b, result := c.reserve(k, now, limit, burst)
				after := checkCore(t, &c, !refuse)
				if b != nil {
					res = append(res, Reservation{g: g, b: b, at: at, gen: b.gen})
				}
				if result.Full {
					refused++
				}
				if had && result.Full {
					t.Fatalf("step %d: held key refused as Full", step)
				}
				_, has := after.vals[k]
				if !had && result.Full == has {
					t.Fatalf("step %d: Full %v, bucket held %v", step, result.Full, has)
				}
				if result.Full && (!refuse || !full) {
					t.Fatalf("step %d: Full (refuse %v, shard full %v)", step, refuse, full)
				}
				if has && after.order[len(after.order)-1] != k {
					t.Fatalf("step %d: the reserved bucket is not the most recently used", step)
				}
				if result.Full && !rotated(before.order, after.order) {
					t.Fatalf("step %d: a refusal reordered more than %d buckets", step, refuseLook)
				}
				var gone []uint64
				for key, was := range before.vals {
					got, ok := after.vals[key]
					switch {
					case !ok:
						gone = append(gone, key)
					case key != k && (got != was || after.ptrs[key] != before.ptrs[key]):
						t.Fatalf("step %d: bucket %d changed from %+v to %+v", step, key, was, got)
					}
				}
				switch {
				case len(gone) > 1 || len(gone) == 1 && (had || !full || result.Full):
					t.Fatalf("step %d: %d buckets gone (hit %v, full %v, result %+v)", step, len(gone), had, full, result)
				case len(gone) == 1:
					dropped++
					wasRefilled := before.vals[gone[0]].refilled(at)
					if !refuse && gone[0] != before.order[0] {
						t.Fatalf("step %d: dropped key %d, not the least recently used %d", step, gone[0], before.order[0])
					}
					if refuse && (!wasRefilled || !slices.Contains(before.order[:min(refuseLook, len(before.order))], gone[0])) {
						t.Fatalf("step %d: refuse mode dropped key %d (refilled %v), not one of the %d least recently used that had refilled", step, gone[0], wasRefilled, refuseLook)
					}
					if counted := c.evictions == evictions+1; counted == wasRefilled {
						t.Fatalf("step %d: eviction counted %v, bucket refilled %v", step, counted, wasRefilled)
					}
				default:
					if c.evictions != evictions {
						t.Fatalf("step %d: eviction counted, nothing gone", step)
					}
				}
			}
			t.Logf("%d buckets; %d dropped for new keys, %d new keys refused; %d evictions (by Reserve and resize)", c.lru.Len(), dropped, refused, c.evictions)
		})
	}
}

// checkResize resizes c to capacity and checks the buckets it kept: all of
// them, in place, when they fit; otherwise the most recently updated of
// those that had not refilled (by oldestFirst), as copies, every dropped
// one that had not refilled counted as an eviction.
func checkResize(t *testing.T, step int, c *core[uint64], before snapshot, capacity int) {
	t.Helper()
	evictions := c.evictions
	c.resize(capacity)
	after := checkCore(t, c, false)
	if c.capacity != capacity {
		t.Fatalf("step %d: capacity %d after resize to %d", step, c.capacity, capacity)
	}
	if len(before.order) <= capacity {
		for k, p := range before.ptrs {
			if after.ptrs[k] != p || after.vals[k] != before.vals[k] {
				t.Fatalf("step %d: resize to %d, which fits, moved or changed key %d", step, capacity, k)
			}
		}
		if c.evictions != evictions || len(after.order) != len(before.order) {
			t.Fatalf("step %d: resize that fits dropped buckets", step)
		}
		return
	}
	var kept, dropped []moved[uint64]
	lost := uint64(0)
	for k, b := range before.vals {
		m := moved[uint64]{k, b}
		switch got, ok := after.vals[k]; {
		case ok && (got != b || after.ptrs[k] == before.ptrs[k]):
			t.Fatalf("step %d: key %d kept as %+v at %p, was %+v at %p", step, k, got, after.ptrs[k], b, before.ptrs[k])
		case ok:
			kept = append(kept, m)
		case !b.refilled(c.clock):
			dropped = append(dropped, m)
			lost++
		}
	}
	for _, m := range kept {
		if m.b.refilled(c.clock) {
			t.Fatalf("step %d: resize kept a refilled bucket", step)
		}
	}
	if len(kept) != min(len(kept)+len(dropped), capacity) {
		t.Fatalf("step %d: resize to %d kept %d, dropped %d that had not refilled", step, capacity, len(kept), len(dropped))
	}
	for _, d := range dropped {
		for _, k := range kept {
			if oldestFirst(k, d) < 0 {
				t.Fatalf("step %d: dropped %+v, kept older %+v", step, d.b, k.b)
			}
		}
	}
	if c.evictions != evictions+lost {
		t.Fatalf("step %d: %d evictions counted, want %d", step, c.evictions-evictions, lost)
	}
}

// TestLRUKeepsUsedBuckets floods a full shard with new keys while a few
// keys are used between every batch of them: the LRU must never evict
// those (nor let them start afresh).
func TestLRUKeepsUsedBuckets(t *testing.T) {
	const (
		capacity = 127 // one shard
		hot      = 10
		batch    = 8 // new keys per round
		rounds   = 2000
	)
	tb := New(Options{MaxKeys: capacity}, mix)
	next := uint64(1 << 32)
	for round := range rounds {
		now := at(time.Duration(round) * time.Millisecond)
		for k := range uint64(hot) {
			// A tiny rate and a large burst: a bucket that started afresh
			// would hold more tokens than burst-round-1.
			if _, r := tb.Reserve(k, now, 1e-9, 1_000_000); !r.OK {
				t.Fatalf("round %d: hot key %d refused", round, k)
			}
			if got, _ := tb.Tokens(k, now); math.Abs(got-float64(1_000_000-round-1)) > 0.01 {
				t.Fatalf("round %d: hot key %d holds %v tokens, want %d (evicted)", round, k, got, 1_000_000-round-1)
			}
		}
		for range batch {
			tb.Reserve(next, now, 1e-3, 5) // refills in 1000s: evicted, not dropped
			next++
		}
	}
	if n := tb.Len(); n != capacity {
		t.Fatalf("Len = %d, want %d", n, capacity)
	}
	if got, want := tb.Evictions(), uint64(rounds*batch-(capacity-hot)); got != want {
		t.Fatalf("Evictions = %d, want %d (every flood key but those that fit)", got, want)
	}
}

// TestCancelAfterGrowth checks that a reservation keeps naming its bucket
// while the shard's map grows and while other buckets are evicted.
func TestCancelAfterGrowth(t *testing.T) {
	tb := New(Options{MaxKeys: 64}, mix) // one shard
	tb.Reserve(1, t0, 1, 3)
	res, _ := tb.Reserve(1, t0, 1, 3)
	for k := range uint64(61) { // keys 2 to 62
		tb.Reserve(k+2, t0, 1, 3)
	}
	res.Cancel(t0)
	if got, _ := tb.Tokens(1, t0); got != 2 {
		t.Fatalf("after the map grew: %v tokens after Cancel, want 2", got)
	}

	tb.Reserve(63, t0, 1, 3)
	res, _ = tb.Reserve(63, t0, 1, 3)
	tb.Reserve(64, t0, 1, 3) // the shard is full (64 buckets)
	tb.Reserve(65, t0, 1, 3) // evicts the least recently used: key 1
	if _, ok := tb.Tokens(1, t0); ok || tb.Evictions() != 1 {
		t.Fatalf("%d evictions, key 1 held %v: want key 1 evicted", tb.Evictions(), ok)
	}
	res.Cancel(t0)
	if got, _ := tb.Tokens(63, t0); got != 2 {
		t.Fatalf("after an eviction: %v tokens after Cancel, want 2", got)
	}
}

// TestMemoryBound checks the heap a full table takes per bucket, for
// 8-byte keys (BenchmarkMemoryPerKey measures keys shaped like keys.Key).
// A bucket costs simplelru's entry (list links, key, pointer and the
// expiry fields it carries for its expirable sibling: 80 B for a uint64
// key), the 32-byte bucket, and a map slot (16 B at the map's load).
func TestMemoryBound(t *testing.T) {
	const n = 200_000
	before := heapAlloc()
	tb := New(Options{MaxKeys: n}, mix)
	for k := range uint64(n) {
		tb.Reserve(k, t0, 1, 5)
	}
	after := heapAlloc()
	perKey := (float64(after) - float64(before)) / float64(tb.Len())
	t.Logf("%d buckets: heap %.1f B/bucket", tb.Len(), perKey)
	if perKey > 160 {
		t.Errorf("heap grew by %.1f B per bucket, want at most 160", perKey)
	}
	runtime.KeepAlive(tb)
}

// TestOldestFirst checks the order in which Resize drops buckets: the
// least recently updated first, and of those updated at the same time the
// fullest.
func TestOldestFirst(t *testing.T) {
	ordered := []moved[uint64]{
		{1, bucket{last: 1, tokens: 1}},
		{2, bucket{last: 1, tokens: 0}},
		{3, bucket{last: 4, tokens: 0}},
		{4, bucket{last: 5, tokens: 1}},
		{5, bucket{last: 5, tokens: 0}},
	}
	for i := range ordered {
		for j := range ordered {
			if got, want := oldestFirst(ordered[i], ordered[j]), cmp.Compare(i, j); got != want {
				t.Errorf("oldestFirst(%d, %d) = %d, want %d", i, j, got, want)
			}
		}
	}
}
