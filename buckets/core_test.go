package buckets

import (
	"cmp"
	"fmt"
	"maps"
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

// snapshot is a core's buckets at one step: their ids from least to most
// recently used, and each bucket with its parameters.
type snapshot struct {
	order []uint64
	vals  map[uint64]bucket
	sets  map[uint64]params
}

// checkCore fails unless c holds at most its capacity, every id has one
// bucket under one in-use parameter set, and the sets count their buckets.
// It returns c's snapshot.
func checkCore(t *testing.T, c *core) snapshot {
	t.Helper()
	keys, bs := c.lru.Keys(), c.lru.Values()
	if len(keys) > c.capacity || c.lru.Len() != len(keys) {
		t.Fatalf("%d buckets (Len %d), capacity %d", len(keys), c.lru.Len(), c.capacity)
	}
	if len(c.sets) != len(c.uses) || len(c.sets) > maxSets {
		t.Fatalf("%d sets, %d counts", len(c.sets), len(c.uses))
	}
	s := snapshot{vals: map[uint64]bucket{}, sets: map[uint64]params{}}
	uses := make([]int, len(c.sets))
	for i, k := range keys {
		id, set := k&^setMask, int(k&setMask)
		if b, ok := c.lru.Peek(k); !ok || b != bs[i] {
			t.Fatalf("key %#x: Peek gives %+v, %v; the list holds %+v", k, b, ok, bs[i])
		}
		if _, dup := s.vals[id]; dup {
			t.Fatalf("id %#x has two buckets", id)
		}
		if set >= len(c.sets) {
			t.Fatalf("key %#x: set %d of %d", k, set, len(c.sets))
		}
		uses[set]++
		s.order = append(s.order, id)
		s.vals[id], s.sets[id] = bs[i], c.sets[set]
	}
	if !slices.Equal(uses, c.uses) {
		t.Fatalf("sets count %v buckets, hold %v", c.uses, uses)
	}
	return s
}

// rotated reports whether after is before with its first m ids moved to
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

// without returns order without the ids in drop.
func without(order []uint64, drop ...uint64) []uint64 {
	return slices.DeleteFunc(slices.Clone(order), func(id uint64) bool { return slices.Contains(drop, id) })
}

// held is a reservation in TestCoreChurn, with what the test knows of it.
type held struct {
	Reservation
	id       uint64
	p        params
	stayed   bool // the bucket has kept its key in the LRU since
	removals int  // removals from the LRU since
}

// TestCoreChurn drives a small core with Reserves of random keys (more
// keys than its capacity) and parameters, Cancels and resizes, and checks
// after each step, against the step before: the core is consistent; a hit
// never drops a bucket; a new key drops at most one other, only when the
// shard is full, counted as an eviction exactly when that one had not
// refilled; in evict mode that one is the least recently used; refuse mode
// never drops a bucket that has not refilled and looks at no more than
// refuseLook; every other bucket keeps its value, parameters and place;
// the reserved bucket becomes the most recently used, under its new
// parameters; a Cancel gives the token back exactly when its bucket has
// stayed and the shard remembers every removal since, and else changes
// nothing.
func TestCoreChurn(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprint("refuse=", refuse), func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			s := &shard{epoch: t0, core: newCore(100, 0, refuse)}
			c := &s.core
			now := int64(0)
			pool := make([]uint64, 300)
			for i := range pool {
				pool[i] = r.Uint64() &^ setMask
			}
			// Each key keeps its parameters for a while: a reload or a
			// tier change is rare, but 60 sets can be in use at once.
			pick := func() params { return params{rate.Limit(1 + r.IntN(20)), int32(1 + r.IntN(3))} }
			keyParams := map[uint64]params{}
			var res []*held
			var dropped, refused, restored, notRestored int
			for step := range 30_000 {
				before := checkCore(t, c)
				now += r.Int64N(int64(50 * time.Millisecond))
				switch op := r.IntN(20); {
				case op == 0:
					capacity := 1 + r.IntN(150)
					checkResize(t, step, c, before, capacity)
					if len(before.order) > capacity {
						for _, h := range res {
							h.stayed = false // moved into a new LRU
						}
					}
					continue
				case op < 4 && len(res) > 0:
					i := len(res) - 1 // mostly the latest, as a refused handshake does
					if r.IntN(2) == 0 {
						i = r.IntN(len(res))
					}
					h := res[i]
					res = slices.Delete(res, i, i+1)
					h.Cancel(t0.Add(time.Duration(h.at)))
					after := checkCore(t, c)
					if h.stayed && h.removals <= recentSize {
						restored++
						was := before.vals[h.id]
						if got, want := after.vals[h.id], was.cancel(h.p, h.at); got != want {
							t.Fatalf("step %d: Cancel took %+v to %+v, want %+v", step, was, got, want)
						}
						if !slices.Equal(after.order, append(without(before.order, h.id), h.id)) {
							t.Fatalf("step %d: Cancel did not make its bucket the most recently used", step)
						}
						continue
					}
					notRestored++
					if !slices.Equal(after.order, before.order) || !maps.Equal(after.vals, before.vals) {
						t.Fatalf("step %d: Cancel of a bucket that did not stay (%+v) changed the core", step, h)
					}
					continue
				}
				k := pool[r.IntN(len(pool))]
				p, ok := keyParams[k]
				if !ok || r.IntN(10) == 0 {
					p = pick()
					keyParams[k] = p
				}
				_, had := before.vals[k]
				full := len(before.order) == c.capacity
				evictions, removed := c.evictions, c.removed
				at, key, ok, result := c.reserve(k, now, p)
				after := checkCore(t, c)
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
				if has && (after.order[len(after.order)-1] != k || after.sets[k] != p) {
					t.Fatalf("step %d: the reserved bucket is not the most recently used under %+v", step, p)
				}
				if has && key != k|uint64(c.find(p)) {
					t.Fatalf("step %d: key %#x for id %#x", step, key, k)
				}
				if result.Full && !rotated(before.order, after.order) {
					t.Fatalf("step %d: a refusal reordered more than %d buckets", step, refuseLook)
				}
				var gone []uint64
				for id, was := range before.vals {
					got, ok := after.vals[id]
					switch {
					case !ok:
						gone = append(gone, id)
					case id != k && (got != was || after.sets[id] != before.sets[id]):
						t.Fatalf("step %d: bucket %#x changed from %+v to %+v", step, id, was, got)
					}
				}
				if !refuse && !slices.Equal(without(after.order, k), without(before.order, append(gone, k)...)) {
					t.Fatalf("step %d: the other buckets changed places", step)
				}
				moved := had && before.sets[k] != p
				if got, want := c.removed-removed, uint64(len(gone)); moved && got != want+1 || !moved && got != want {
					t.Fatalf("step %d: %d removals counted, %d buckets gone, moved %v", step, got, want, moved)
				}
				for _, h := range res {
					h.removals += int(c.removed - removed)
					if slices.Contains(gone, h.id) || moved && h.id == k {
						h.stayed = false
					}
				}
				if ok {
					if len(res) == 2*recentSize {
						res = slices.Delete(res, 0, 1) // enough old ones to cancel
					}
					res = append(res, &held{Reservation: Reservation{s: s, key: key, at: at, seq: c.removed}, id: k, p: p, stayed: true})
				}
				switch {
				case len(gone) > 1 || len(gone) == 1 && (had || !full || result.Full):
					t.Fatalf("step %d: %d buckets gone (hit %v, full %v, result %+v)", step, len(gone), had, full, result)
				case len(gone) == 1:
					dropped++
					wasRefilled := before.vals[gone[0]].refilled(before.sets[gone[0]], at)
					if !refuse && gone[0] != before.order[0] {
						t.Fatalf("step %d: dropped key %#x, not the least recently used %#x", step, gone[0], before.order[0])
					}
					if refuse && (!wasRefilled || !slices.Contains(before.order[:min(refuseLook, len(before.order))], gone[0])) {
						t.Fatalf("step %d: refuse mode dropped key %#x (refilled %v), not one of the %d least recently used that had refilled", step, gone[0], wasRefilled, refuseLook)
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
			t.Logf("%d buckets in %d sets; %d dropped for new keys, %d new keys refused; %d evictions (by Reserve and resize); %d cancels restored, %d not",
				c.lru.Len(), len(c.sets), dropped, refused, c.evictions, restored, notRestored)
			if restored == 0 || notRestored == 0 {
				t.Fatalf("%d cancels restored, %d not: want both", restored, notRestored)
			}
		})
	}
}

// checkResize resizes c to capacity and checks the buckets it kept: all of
// them, in place, when they fit; otherwise the most recently updated of
// those that had not refilled (by oldestFirst), every dropped one that had
// not refilled counted as an eviction, and every reservation from before
// made void.
func checkResize(t *testing.T, step int, c *core, before snapshot, capacity int) {
	t.Helper()
	evictions, removed := c.evictions, c.removed
	c.resize(capacity)
	after := checkCore(t, c)
	if c.capacity != capacity {
		t.Fatalf("step %d: capacity %d after resize to %d", step, c.capacity, capacity)
	}
	if len(before.order) <= capacity {
		if !slices.Equal(after.order, before.order) || !maps.Equal(after.vals, before.vals) || !maps.Equal(after.sets, before.sets) {
			t.Fatalf("step %d: resize to %d, which fits, changed the buckets", step, capacity)
		}
		if c.evictions != evictions || c.removed != removed {
			t.Fatalf("step %d: resize that fits dropped buckets", step)
		}
		return
	}
	if c.removed-removed < uint64(len(before.order)) {
		t.Fatalf("step %d: resize moved %d buckets and counted %d removals", step, len(before.order), c.removed-removed)
	}
	var kept, dropped []moved
	lost := uint64(0)
	for id, b := range before.vals {
		m := moved{id, b, before.sets[id]}
		switch got, ok := after.vals[id]; {
		case ok && (got != b || after.sets[id] != m.p):
			t.Fatalf("step %d: key %#x kept as %+v under %+v, was %+v under %+v", step, id, got, after.sets[id], b, m.p)
		case ok:
			kept = append(kept, m)
		case !b.refilled(m.p, c.clock):
			dropped = append(dropped, m)
			lost++
		}
	}
	for _, m := range kept {
		if m.b.refilled(m.p, c.clock) {
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

// TestParameterSets checks the sets of a shard: keys with different
// parameters (tiers) keep their own; a key that changes parameters moves
// to the new set with the arithmetic of x/time/rate's SetLimitAt and
// SetBurstAt, and its reservations from before give nothing back, even once
// it is back under the parameters they were taken with; a set without
// buckets is used again; and a shard with maxSets sets in use drops the
// buckets of the set with the fewest to make a new one.
func TestParameterSets(t *testing.T) {
	ms := time.Millisecond
	tb := New[string](Options{MaxKeys: minShardKeys}) // one shard
	s := &tb.set.Load().shards[0]
	runSteps(t, tb, "free", 1, 2, []step{{0, true, 0, 1}})
	runSteps(t, tb, "pro", 10, 20, []step{{0, true, 0, 19}})
	res, _ := tb.Reserve("pro", t0, 10, 20)
	if len(s.sets) != 2 {
		t.Fatalf("%d sets, want 2", len(s.sets))
	}
	// "free" is upgraded: 500 ms at its old rate, then the new one.
	runSteps(t, tb, "free", 10, 20, []step{{500 * ms, true, 0, 0.5}, {600 * ms, true, 0, 0.5}})
	// "pro" is downgraded and upgraded again at t0: its reservation gives
	// nothing back.
	runSteps(t, tb, "pro", 1, 2, []step{{0, true, 0, 1}})
	runSteps(t, tb, "pro", 10, 20, []step{{0, true, 0, 0}})
	res.Cancel(t0)
	if got, _ := tb.Tokens("pro", t0); got != 0 {
		t.Fatalf("pro holds %v tokens after a Cancel from before its changes, want 0", got)
	}
	if got := s.uses; !slices.Equal(got, []int{0, 2}) {
		t.Fatalf("sets count %v buckets, want [0 2]", got)
	}
	runSteps(t, tb, "new", 3, 3, []step{{time.Second, true, 0, 2}})
	if len(s.sets) != 2 || s.sets[0] != (params{3, 3}) {
		t.Fatalf("sets %v, want the free one used for {3 3}", s.sets)
	}

	// Fill the sets: id i has limit i+1, and so has id i+64 but for set 7.
	// A 65th limit retires set 7, the one with the fewest buckets.
	c := newCore(1000, 0, false)
	for i := range uint64(maxSets) {
		c.reserve(i<<8, 0, params{rate.Limit(i + 1), 5})
		if i != 7 {
			c.reserve((i+maxSets)<<8, 0, params{rate.Limit(i + 1), 5})
		}
	}
	if _, _, ok, r := c.reserve(1<<32, 0, params{1000, 5}); !ok {
		t.Fatalf("65th parameter set: %+v", r)
	}
	checkCore(t, &c)
	if len(c.sets) != maxSets || c.sets[7] != (params{1000, 5}) || c.uses[7] != 1 {
		t.Fatalf("set 7 is %+v with %d buckets, want {1000 5} with 1", c.sets[7], c.uses[7])
	}
	if _, _, ok := c.lookup(7<<8, -1); ok || c.lru.Len() != 2*maxSets-1 || c.evictions != 1 {
		t.Fatalf("%d buckets, %d evictions, id 7 kept %v: want %d, 1, false", c.lru.Len(), c.evictions, ok, 2*maxSets-1)
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
	tb := New[uint64](Options{MaxKeys: capacity})
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
	tb := New[uint64](Options{MaxKeys: 64}) // one shard
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
	tb.Reserve(65, t0, 1, 3) // evicts the least recently used: key 2 (key 1's Cancel used it)
	if _, ok := tb.Tokens(2, t0); ok || tb.Evictions() != 1 {
		t.Fatalf("%d evictions, key 2 held %v: want key 2 evicted", tb.Evictions(), ok)
	}
	res.Cancel(t0)
	if got, _ := tb.Tokens(63, t0); got != 2 {
		t.Fatalf("after an eviction: %v tokens after Cancel, want 2", got)
	}
}

// TestMemoryBound checks the heap a full table takes per bucket (the key's
// type does not matter: the table keeps a digest). A bucket costs
// simplelru's entry (list links, the 8-byte LRU key, the 16-byte bucket,
// and the expiry fields simplelru carries for its expirable sibling: 80
// B), and a map slot of 16 B in a map between 7/16 and 7/8 full.
func TestMemoryBound(t *testing.T) {
	const n = 200_000
	before := heapAlloc()
	tb := New[uint64](Options{MaxKeys: n})
	for k := range uint64(n) {
		tb.Reserve(k, t0, 1, 5)
	}
	after := heapAlloc()
	perKey := (float64(after) - float64(before)) / float64(tb.Len())
	t.Logf("%d buckets: heap %.1f B/bucket", tb.Len(), perKey)
	if perKey > 128 {
		t.Errorf("heap grew by %.1f B per bucket, want at most 128", perKey)
	}
	runtime.KeepAlive(tb)
}

// TestOldestFirst checks the order in which Resize drops buckets: the
// least recently updated first, and of those updated at the same time the
// fullest.
func TestOldestFirst(t *testing.T) {
	ordered := []moved{
		{1, bucket{last: 1, tokens: 1}, params{}},
		{2, bucket{last: 1, tokens: 0}, params{}},
		{3, bucket{last: 4, tokens: 0}, params{}},
		{4, bucket{last: 5, tokens: 1}, params{}},
		{5, bucket{last: 5, tokens: 0}, params{}},
	}
	for i := range ordered {
		for j := range ordered {
			if got, want := oldestFirst(ordered[i], ordered[j]), cmp.Compare(i, j); got != want {
				t.Errorf("oldestFirst(%d, %d) = %d, want %d", i, j, got, want)
			}
		}
	}
}
