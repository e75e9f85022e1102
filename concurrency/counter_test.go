package concurrency

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wslimit/wslimit/keys"
)

var seed = maphash.MakeSeed()

func hashString(s string) uint64 { return maphash.String(seed, s) }

// mix is a non-allocating hash for integer keys (splitmix64 finaliser).
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func TestAcquireRelease(t *testing.T) {
	c := New(hashString)
	steps := []struct {
		name    string
		acquire bool // else release
		limit   int
		want    bool
		count   int
	}{
		{"first slot", true, 2, true, 1},
		{"second slot", true, 2, true, 2},
		{"cap reached", true, 2, false, 2},
		{"higher limit admits", true, 3, true, 3},
		{"lower limit refuses", true, 1, false, 3},
		{"zero limit refuses", true, 0, false, 3},
		{"negative limit refuses", true, -1, false, 3},
		{"release", false, 0, true, 2},
		{"release", false, 0, true, 1},
		{"release last", false, 0, true, 0},
		{"release below zero", false, 0, false, 0},
		{"acquire again", true, 1, true, 1},
	}
	for i, s := range steps {
		var got bool
		if s.acquire {
			got = c.Acquire("a", s.limit)
		} else {
			got = c.Release("a")
		}
		if got != s.want {
			t.Fatalf("step %d %q: got %v, want %v", i, s.name, got, s.want)
		}
		if n := c.Count("a"); n != s.count {
			t.Fatalf("step %d %q: Count = %d, want %d", i, s.name, n, s.count)
		}
	}
}

// TestEntryDeletedAtZero guards bounded memory: a key that holds no slot
// must not hold an entry.
func TestEntryDeletedAtZero(t *testing.T) {
	c := New(hashString)
	for i := range 100 {
		c.Acquire(strconv.Itoa(i), 5)
		c.Acquire(strconv.Itoa(i), 5)
	}
	if got, want := c.Len(), 100; got != want {
		t.Fatalf("Len = %d, want %d", got, want)
	}
	if got, want := c.Total(), 200; got != want {
		t.Fatalf("Total = %d, want %d", got, want)
	}
	for i := range 100 {
		c.Release(strconv.Itoa(i))
	}
	if got, want := c.Len(), 100; got != want {
		t.Fatalf("after one release each: Len = %d, want %d", got, want)
	}
	for i := range 100 {
		c.Release(strconv.Itoa(i))
	}
	if got := c.Len(); got != 0 {
		t.Fatalf("after all releases: Len = %d, want 0", got)
	}
	if got := c.Total(); got != 0 {
		t.Fatalf("after all releases: Total = %d, want 0", got)
	}
	// A refused Acquire leaves no entry either.
	c.Acquire("never", 0)
	if got := c.Len(); got != 0 {
		t.Fatalf("after refused Acquire: Len = %d, want 0", got)
	}
	if c.Release("never") {
		t.Fatal("Release of a key that never held a slot reported true")
	}
}

// TestShrink checks that a shard's map is rebuilt smaller once most of its
// keys are gone (Go maps keep their memory after deletions), and that no
// count is lost in the copy.
func TestShrink(t *testing.T) {
	c := New(mix)
	const n = 100_000
	for i := range n {
		c.Acquire(uint64(i), 2)
	}
	for i := range n {
		if i%10 == 0 {
			c.Acquire(uint64(i), 2) // these keep one slot after the release below
		}
		c.Release(uint64(i))
	}
	if got, want := c.Len(), n/10; got != want {
		t.Fatalf("Len = %d, want %d", got, want)
	}
	for i := range c.shards {
		s := &c.shards[i]
		if s.peak >= minRebuild && s.peak > 8*len(s.m) {
			t.Errorf("shard %d: %d keys in a map that held %d: map not rebuilt", i, len(s.m), s.peak)
		}
	}
	for i := range n {
		want := 0
		if i%10 == 0 {
			want = 1
		}
		if got := c.Count(uint64(i)); got != want {
			t.Fatalf("Count(%d) = %d, want %d", i, got, want)
		}
	}
	// Emptied, every shard holds a small map or none.
	for i := 0; i < n; i += 10 {
		c.Release(uint64(i))
	}
	for i := range c.shards {
		if s := &c.shards[i]; len(s.m) != 0 || s.total != 0 || s.peak >= minRebuild {
			t.Errorf("shard %d: %d keys, total %d, peak %d after all releases", i, len(s.m), s.total, s.peak)
		}
	}
}

// TestExactCap races N+k goroutines for a cap of N: exactly N may win.
func TestExactCap(t *testing.T) {
	for _, tc := range []struct{ limit, extra int }{{1, 50}, {10, 10}, {100, 400}} {
		t.Run(fmt.Sprintf("cap%d", tc.limit), func(t *testing.T) {
			c := New(hashString)
			var won atomic.Int64
			var start, wg sync.WaitGroup
			start.Add(1)
			for range tc.limit + tc.extra {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start.Wait()
					if c.Acquire("k", tc.limit) {
						won.Add(1)
					}
				}()
			}
			start.Done()
			wg.Wait()
			if got := int(won.Load()); got != tc.limit {
				t.Fatalf("%d Acquires succeeded, want %d", got, tc.limit)
			}
			if got := c.Count("k"); got != tc.limit {
				t.Fatalf("Count = %d, want %d", got, tc.limit)
			}
		})
	}
}

// TestReleaseNeverBelowZero races more Releases than slots held.
func TestReleaseNeverBelowZero(t *testing.T) {
	c := New(hashString)
	const held = 10
	for range held {
		c.Acquire("k", held)
	}
	var released atomic.Int64
	var wg sync.WaitGroup
	for range 5 * held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.Release("k") {
				released.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := released.Load(); got != held {
		t.Fatalf("%d Releases succeeded, want %d", got, held)
	}
	if got := c.Count("k"); got != 0 {
		t.Fatalf("Count = %d, want 0", got)
	}
	if got := c.Len(); got != 0 {
		t.Fatalf("Len = %d, want 0", got)
	}
}

// TestManyKeysConcurrently runs goroutines that acquire and release over
// shared keys while the cap holds at every step.
func TestManyKeysConcurrently(t *testing.T) {
	c := New(mix)
	const (
		workers = 8
		keys    = 1000
		limit   = 3
		rounds  = 2000
	)
	var over atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held []uint64
			for i := range rounds {
				k := uint64((w*7919 + i*31) % keys)
				if c.Acquire(k, limit) {
					held = append(held, k)
					if c.Count(k) > limit {
						over.Add(1)
					}
				}
				if len(held) > 20 || i%3 == 0 && len(held) > 0 {
					if !c.Release(held[0]) {
						over.Add(1)
					}
					held = held[1:]
				}
			}
			for _, k := range held {
				if !c.Release(k) {
					over.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := over.Load(); n != 0 {
		t.Fatalf("%d violations (count above cap or failed release of a held slot)", n)
	}
	if c.Len() != 0 || c.Total() != 0 {
		t.Fatalf("after all releases: Len = %d, Total = %d, want 0, 0", c.Len(), c.Total())
	}
}

func TestTop(t *testing.T) {
	c := New(hashString)
	want := []Entry[string]{{"e", 9}, {"d", 7}, {"c", 5}, {"b", 3}, {"a", 1}}
	for _, e := range []Entry[string]{want[3], want[0], want[4], want[2], want[1]} {
		for range e.Count {
			c.Acquire(e.Key, 100)
		}
	}
	for _, tc := range []struct {
		n    int
		want []Entry[string]
	}{
		{0, nil},
		{-1, nil},
		{1, want[:1]},
		{3, want[:3]},
		{5, want},
		{10, want},
	} {
		got := c.Top(tc.n)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Top(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	const poolSize = 100_000
	pool := make([]string, poolSize)
	for i := range pool {
		pool[i] = "10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256)
	}
	// existing: every key already holds a slot, so the measured pair
	// updates an entry and never inserts or deletes one.
	// fresh: every key holds nothing, so each pair inserts and deletes.
	for _, existing := range []bool{true, false} {
		name := "fresh"
		if existing {
			name = "existing"
		}
		c := New(hashString)
		if existing {
			for _, k := range pool {
				c.Acquire(k, 2)
			}
		}
		b.Run(name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				k := pool[i%poolSize]
				if !c.Acquire(k, 2) {
					b.Fatal("Acquire refused")
				}
				c.Release(k)
				i++
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(7919))
				for pb.Next() {
					k := pool[i%poolSize]
					if c.Acquire(k, 1000) {
						c.Release(k)
					}
					i++
				}
			})
		})
	}
}

// TestChurnAgainstMap drives one Counter and a plain map through the same
// random acquires and releases, with a hash of 8 values that all choose
// shard 0 (many keys per hash, one map), so that the map grows and is
// rebuilt smaller over and over. Every answer and every count must match
// the map's.
func TestChurnAgainstMap(t *testing.T) {
	c := New(func(k uint64) uint64 { return mix(k) & 0x1c0 })
	want := map[uint64]int{}
	rng := uint64(1)
	next := func() uint64 { rng = mix(rng + 0x9e3779b97f4a7c15); return rng }
	const keySpace, limit = 600, 3
	prevPeak, rebuilds := 0, 0
	for step := 0; step < 200_000; step++ {
		k := next() % keySpace
		// Phases of mostly-acquire and mostly-release make maps grow and
		// shrink repeatedly.
		acquire := next()%100 < 70
		if (step/20_000)%2 == 1 {
			acquire = next()%100 < 5
		}
		if acquire {
			got, exp := c.Acquire(k, limit), want[k] < limit
			if got != exp {
				t.Fatalf("step %d: Acquire(%d) = %v, want %v (count %d)", step, k, got, exp, want[k])
			}
			if exp {
				want[k]++
			}
		} else {
			got, exp := c.Release(k), want[k] > 0
			if got != exp {
				t.Fatalf("step %d: Release(%d) = %v, want %v", step, k, got, exp)
			}
			if exp {
				if want[k]--; want[k] == 0 {
					delete(want, k)
				}
			}
		}
		if s := &c.shards[0]; s.peak >= minRebuild && s.peak > 8*len(s.m) {
			t.Fatalf("step %d: %d keys in a map that held %d: not rebuilt", step, len(s.m), s.peak)
		}
		if step%5000 == 0 {
			total := 0
			for k := uint64(0); k < keySpace; k++ {
				if got := c.Count(k); got != want[k] {
					t.Fatalf("step %d: Count(%d) = %d, want %d", step, k, got, want[k])
				}
				total += want[k]
			}
			if c.Len() != len(want) || c.Total() != total {
				t.Fatalf("step %d: Len %d Total %d, want %d and %d", step, c.Len(), c.Total(), len(want), total)
			}
		}
		if s := &c.shards[0]; s.peak < prevPeak {
			rebuilds++
		}
		prevPeak = c.shards[0].peak
	}
	if rebuilds == 0 {
		t.Fatal("the map was never rebuilt")
	}
	t.Logf("%d rebuilds", rebuilds)
}

// BenchmarkMemoryPerSlot measures the heap a Counter holds per key holding
// one slot, over 1,000,000 keys.Key IP keys (56 bytes: a kind, a
// netip.Prefix and a string), as the heap delta after a GC.
func BenchmarkMemoryPerSlot(b *testing.B) {
	const n = 1_000_000
	seed := maphash.MakeSeed()
	hash := func(k keys.Key) uint64 { return k.Hash(seed) }
	pool := make([]keys.Key, n)
	for i := range pool {
		pool[i] = keys.IP(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var perSlot float64
	for b.Loop() {
		before := heap()
		c := New(hash)
		for _, k := range pool {
			if !c.Acquire(k, 1) {
				b.Fatal("refused")
			}
		}
		perSlot = float64(heap()-before) / float64(c.Len())
		runtime.KeepAlive(c)
	}
	b.ReportMetric(perSlot, "B/slot")
}
