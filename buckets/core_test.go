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
	"unsafe"

	"golang.org/x/time/rate"
)

// This file tests core, the open-addressed slots and the CLOCK hand of one
// shard, against a reference map and against the invariants of linear
// probing.

// checkCore fails unless c's slots are a valid linear-probing table: count
// matches the occupied slots, no hash appears twice, every bucket is found
// by find, and no empty slot lies between a bucket's home and its slot.
func checkCore(t *testing.T, c *core) {
	t.Helper()
	n := len(c.slots)
	seen := make(map[uint64]bool, c.count)
	count := 0
	for i := range c.slots {
		b := &c.slots[i]
		if b.meta == 0 {
			if *b != (slot{}) {
				t.Fatalf("empty slot %d not zeroed: %+v", i, *b)
			}
			continue
		}
		count++
		if seen[b.hash] {
			t.Fatalf("hash %#x held twice", b.hash)
		}
		seen[b.hash] = true
		for j := home(b.hash, n); j != i; j = (j + 1) % n {
			if c.slots[j].meta == 0 {
				t.Fatalf("slot %d (hash %#x, home %d): empty slot %d in between", i, b.hash, home(b.hash, n), j)
			}
		}
		if j, ok := c.find(b.hash); !ok || j != i {
			t.Fatalf("find(%#x) = %d, %v; held at %d", b.hash, j, ok, i)
		}
	}
	if count != c.count {
		t.Fatalf("%d slots occupied, count %d", count, c.count)
	}
	if c.count > c.capacity || c.count >= n {
		t.Fatalf("count %d, capacity %d, %d slots", c.count, c.capacity, n)
	}
	if n > sizeFor(c.capacity) {
		t.Fatalf("%d slots for capacity %d, more than %d", n, c.capacity, sizeFor(c.capacity))
	}
}

// collidingHash returns a hash among few homes (its upper 32 bits take one
// of 8 values, some near the top so that runs wrap around the end of the
// slots), so that runs are long and deletions shift many buckets.
func collidingHash(r *rand.Rand) uint64 {
	hi := []uint64{0, 1 << 31, 0xffffffff, 0xfffffff0, 0xf0000000, 1 << 20, 0x80000001, 0xc0000000}[r.IntN(8)]
	return hi<<32 | uint64(r.Uint32())
}

// TestCoreInsertRemove inserts and removes buckets at random, many with
// colliding homes, and checks the slots against a reference map after each
// step: backward-shift deletion must keep every other bucket findable and
// unchanged, across growth and wrap-around.
func TestCoreInsertRemove(t *testing.T) {
	for _, hashes := range []string{"colliding", "random"} {
		t.Run(hashes, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			c := newCore(200, 0, 0)
			ref := map[uint64]slot{}
			var keys []uint64
			for step := range 10_000 {
				if len(keys) > 0 && (len(keys) >= c.capacity || r.IntN(5) < 2) {
					k := r.IntN(len(keys))
					h := keys[k]
					i, ok := c.find(h)
					if !ok {
						t.Fatalf("step %d: %#x not found", step, h)
					}
					c.remove(i)
					keys[k] = keys[len(keys)-1]
					keys = keys[:len(keys)-1]
					delete(ref, h)
				} else {
					h := r.Uint64()
					if hashes == "colliding" {
						h = collidingHash(r)
					}
					if _, ok := ref[h]; ok {
						continue
					}
					i, ok := c.find(h)
					if ok {
						t.Fatalf("step %d: %#x found before insert", step, h)
					}
					i = c.insert(h, i, 0, false)
					b := slot{hash: h, meta: c.nextGen(), burst: int32(step), tokens: float64(step), last: int64(step), limit: rate.Limit(step)}
					c.slots[i] = b
					ref[h] = b
					keys = append(keys, h)
				}
				checkCore(t, &c)
				if c.count != len(ref) {
					t.Fatalf("step %d: count %d, reference %d", step, c.count, len(ref))
				}
				if step%97 == 0 || c.count < 20 {
					for h, want := range ref {
						if got := c.lookup(h); got == nil || *got != want {
							t.Fatalf("step %d: lookup(%#x) = %+v, want %+v", step, h, got, want)
						}
					}
				}
			}
			if c.evictions != 0 {
				t.Fatalf("%d evictions below capacity", c.evictions)
			}
		})
	}
}

// TestCoreChurn drives a small core with Reserves of random keys (more
// keys than its capacity, some colliding), Cancels and Resizes, and checks
// after each step, against a reference map of the buckets: the slots are a
// valid table; a hit never drops a bucket; a new key drops at most one
// other, only when the shard is full, counted as an eviction exactly when
// that one had not refilled; every other bucket keeps its fields; the hand
// looks at no more than sweepLimit buckets; refuse mode never drops a
// bucket that has not refilled.
func TestCoreChurn(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprint("refuse=", refuse), func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			c := newCore(100, 0, 0)
			ref := map[uint64]slot{}
			now := int64(0)
			pool := make([]uint64, 300)
			for i := range pool {
				pool[i] = r.Uint64()
				if i%2 == 0 {
					pool[i] = collidingHash(r)
				}
			}
			var res []Reservation
			for step := range 30_000 {
				now += r.Int64N(int64(50 * time.Millisecond))
				switch op := r.IntN(20); {
				case op == 0: // resize
					capacity := 1 + r.IntN(150)
					before := ref
					c = c.resized(capacity)
					checkCore(t, &c)
					// The kept buckets are those first in keepFirst order.
					var kept, dropped []held
					for h, b := range before {
						m := held{b, b.refilled(c.clock)}
						if c.lookup(h) != nil {
							kept = append(kept, m)
						} else {
							dropped = append(dropped, m)
						}
					}
					if len(kept) != min(len(before), capacity) {
						t.Fatalf("step %d: resize to %d kept %d of %d", step, capacity, len(kept), len(before))
					}
					for _, d := range dropped {
						for _, k := range kept {
							if keepFirst(d, k) < 0 {
								t.Fatalf("step %d: dropped %+v before %+v", step, d, k)
							}
						}
					}
					ref = map[uint64]slot{}
					for h := range before {
						if b := c.lookup(h); b != nil {
							ref[h] = *b
						}
					}
					continue
				case op < 4 && len(res) > 0: // cancel
					k := r.IntN(len(res))
					rv := res[k]
					res = slices.Delete(res, k, k+1)
					c.cancel(rv.h, rv.gen, rv.at)
					if b := c.lookup(rv.h); b != nil {
						if b.gen() == rv.gen && b.tokens < ref[rv.h].tokens {
							t.Fatalf("step %d: cancel took tokens", step)
						}
						ref[rv.h] = *b
					}
					checkCore(t, &c)
					continue
				}
				h := pool[r.IntN(len(pool))]
				limit, burst := rate.Limit(1+r.IntN(20)), int32(1+r.IntN(3))
				_, had := ref[h]
				full := c.count == c.capacity
				evictions, hand, n := c.evictions, c.hand, len(c.slots)
				occupied := make([]bool, n)
				for i := range c.slots {
					occupied[i] = c.slots[i].meta != 0
				}
				at, gen, result := c.reserve(h, now, limit, burst, refuse)
				checkCore(t, &c)
				if gen != 0 {
					res = append(res, Reservation{at: at, h: h, gen: gen})
				}
				if had && result.Full {
					t.Fatalf("step %d: held key refused as Full", step)
				}
				if !had && result.Full != (c.lookup(h) == nil) {
					t.Fatalf("step %d: Full %v, bucket held %v", step, result.Full, c.lookup(h) != nil)
				}
				if result.Full && (!refuse || !full) {
					t.Fatalf("step %d: Full (refuse %v, shard full %v)", step, refuse, full)
				}
				// The hand looked at no more than sweepLimit buckets.
				looked := 0
				for i := hand; full && n == len(c.slots) && i != c.hand; i = (i + c.stride) % n {
					if occupied[i] {
						looked++
					}
				}
				if looked > sweepLimit || refuse && looked > refuseSweepLimit {
					t.Fatalf("step %d: the hand passed %d buckets", step, looked)
				}
				var gone []uint64
				for k, b := range ref {
					got := c.lookup(k)
					switch {
					case got == nil:
						gone = append(gone, k)
					case k != h && *got != b && *got != withRef(b, false):
						t.Fatalf("step %d: bucket %#x changed from %+v to %+v", step, k, b, *got)
					}
				}
				switch {
				case len(gone) > 1 || len(gone) == 1 && (had || !full || result.Full):
					t.Fatalf("step %d: %d buckets gone (hit %v, full %v, result %+v)", step, len(gone), had, full, result)
				case len(gone) == 1:
					b := ref[gone[0]]
					wasRefilled := b.refilled(at)
					if refuse && !wasRefilled {
						t.Fatalf("step %d: refuse mode dropped a bucket that had not refilled", step)
					}
					if counted := c.evictions == evictions+1; counted == wasRefilled {
						t.Fatalf("step %d: eviction counted %v, bucket refilled %v", step, counted, wasRefilled)
					}
					delete(ref, gone[0])
				default:
					if c.evictions != evictions {
						t.Fatalf("step %d: eviction counted, nothing gone", step)
					}
				}
				if b := c.lookup(h); b != nil {
					if b.meta&referenced == 0 {
						t.Fatalf("step %d: reserved bucket not referenced", step)
					}
					ref[h] = *b
				}
				for k := range ref { // the hand clears referenced bits
					ref[k] = *c.lookup(k)
				}
			}
			t.Logf("%d buckets, %d evictions (by Reserve and resized)", c.count, c.evictions)
		})
	}
}

func withRef(b slot, ref bool) slot {
	if ref {
		b.meta |= referenced
	} else {
		b.meta &^= referenced
	}
	return b
}

// TestClockKeepsUsedBuckets floods a full shard with new keys while a few
// keys are used between every batch of them: CLOCK must never evict those
// (nor let them start afresh). The hand finds the flood's buckets
// unreferenced after its first pass; before that, when every bucket it
// looks at is referenced, it evicts the one updated longest ago, which is
// not one used in the current round.
func TestClockKeepsUsedBuckets(t *testing.T) {
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

// TestCancelAfterMove checks that a reservation names its bucket by hash:
// its Cancel gives the token back after the bucket moved within its shard,
// because the slots grew or a deletion shifted it.
func TestCancelAfterMove(t *testing.T) {
	// Every hash has home 0: the buckets form one run from slot 0.
	tb := New(Options{MaxKeys: 64}, func(k uint64) uint64 { return 7<<32 | k }) // one shard
	s := &tb.set.Load().shards[0]
	slotOf := func(k uint64) int {
		i, ok := s.find(7<<32 | k)
		if !ok {
			t.Fatalf("key %d has no bucket", k)
		}
		return i
	}
	tb.Reserve(1, t0, 1, 3)
	res, _ := tb.Reserve(1, t0, 1, 3)
	i, n := slotOf(1), len(s.slots)
	for k := range uint64(61) { // keys 2 to 62
		tb.Reserve(k+2, t0, 1, 3)
	}
	if len(s.slots) == n {
		t.Fatalf("%d slots, want more", n)
	}
	_ = i
	res.Cancel(t0)
	if got, _ := tb.Tokens(1, t0); got != 2 {
		t.Fatalf("after the slots grew: %v tokens after Cancel, want 2", got)
	}

	tb.Reserve(63, t0, 1, 3)
	res, _ = tb.Reserve(63, t0, 1, 3)
	i = slotOf(63)
	tb.Reserve(64, t0, 1, 3) // the shard is full (64 buckets)
	tb.Reserve(65, t0, 1, 3) // evicts the bucket in slot 0, shifting the run
	if tb.Evictions() != 1 || slotOf(63) != i-1 {
		t.Fatalf("%d evictions, key 63 at %d -> %d: want one, shifted back", tb.Evictions(), i, slotOf(63))
	}
	res.Cancel(t0)
	if got, _ := tb.Tokens(63, t0); got != 2 {
		t.Fatalf("after a shift: %v tokens after Cancel, want 2", got)
	}
}

// TestMemoryBound checks the bytes a full table holds per bucket: its slots
// exactly, and the heap it takes (with slack for the rest of the heap).
func TestMemoryBound(t *testing.T) {
	const n = 200_000
	before := heapAlloc()
	tb := New(Options{MaxKeys: n}, mix)
	for k := range uint64(n) {
		tb.Reserve(k, t0, 1, 5)
	}
	after := heapAlloc()
	set := tb.set.Load()
	slots := 0
	for i := range set.shards {
		slots += cap(set.shards[i].slots)
	}
	size := float64(unsafe.Sizeof(slot{}))
	perKey := float64(slots) * size / float64(tb.Len())
	heapPerKey := (float64(after) - float64(before)) / float64(tb.Len())
	t.Logf("%d buckets: slots %.1f B/bucket, heap %.1f B/bucket", tb.Len(), perKey, heapPerKey)
	if limit := size * 100 / maxLoadPercent * 1.01; perKey > limit {
		t.Errorf("slots take %.1f B per bucket, want at most %.1f", perKey, limit)
	}
	if heapPerKey > 80 {
		t.Errorf("heap grew by %.1f B per bucket, want at most 80", heapPerKey)
	}
	runtime.KeepAlive(tb)
}

// TestKeepFirst checks the order in which Resize keeps buckets: those that
// have not refilled, then the most recently updated, then the emptiest.
func TestKeepFirst(t *testing.T) {
	ordered := []held{
		{slot{last: 5, tokens: 0}, false},
		{slot{last: 5, tokens: 1}, false},
		{slot{last: 4, tokens: 0}, false},
		{slot{last: 9, tokens: 0}, true},
		{slot{last: 1, tokens: 0}, true},
	}
	for i := range ordered {
		for j := range ordered {
			if got, want := keepFirst(ordered[i], ordered[j]), cmp.Compare(i, j); got != want {
				t.Errorf("keepFirst(%d, %d) = %d, want %d", i, j, got, want)
			}
		}
	}
}
