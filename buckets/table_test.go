package buckets

import (
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/internal/handoff"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// mix is the splitmix64 finaliser, for pseudo-random sequences.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func at(d time.Duration) time.Time { return t0.Add(d) }

// step is one Reserve and what it must return.
type step struct {
	at         time.Duration // after t0
	ok         bool
	retryAfter time.Duration
	tokens     float64 // in the bucket at the same time, after the Reserve
}

func runSteps[K comparable](t *testing.T, tb *Table[K], k K, limit rate.Limit, burst int, steps []step) {
	t.Helper()
	for i, s := range steps {
		_, r := tb.Reserve(k, at(s.at), limit, burst)
		if r.OK != s.ok || r.RetryAfter != s.retryAfter || r.Full {
			t.Fatalf("step %d at t0+%v: got %+v, want {OK:%v Full:false RetryAfter:%v}", i, s.at, r, s.ok, s.retryAfter)
		}
		if got, _ := tb.Tokens(k, at(s.at)); math.Abs(got-s.tokens) > 1e-9 {
			t.Fatalf("step %d at t0+%v: %v tokens, want %v", i, s.at, got, s.tokens)
		}
	}
}

func TestReserveArithmetic(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name  string
		limit rate.Limit
		burst int
		steps []step
	}{
		{"burst 3 rate 1/s", 1, 3, []step{
			{0, true, 0, 2},
			{0, true, 0, 1},
			{0, true, 0, 0},
			{0, false, time.Second, 0},
			{500 * ms, false, 500 * ms, 0.5},
			{1000 * ms, true, 0, 0},
			{1000 * ms, false, time.Second, 0},
			{3000 * ms, true, 0, 1},
			{10_000 * ms, true, 0, 2}, // refilled to 3, capped at burst
		}},
		{"burst 1 rate 4/s", 4, 1, []step{
			{0, true, 0, 0},
			{0, false, 250 * ms, 0},
			{125 * ms, false, 125 * ms, 0.5},
			{250 * ms, true, 0, 0},
		}},
		{"rate 1/m", rate.Every(time.Minute), 2, []step{
			{0, true, 0, 1},
			{0, true, 0, 0},
			{0, false, time.Minute, 0},
			{30 * time.Second, false, 30 * time.Second, 0.5},
			{time.Minute, true, 0, 0},
		}},
		{"limit 0: the burst, then never", 0, 2, []step{
			{0, true, 0, 1},
			{0, true, 0, 0},
			{time.Hour, false, rate.InfDuration, 0},
		}},
		{"limit Inf: always", rate.Inf, 1, []step{
			{0, true, 0, 1},
			{0, true, 0, 1},
			{0, true, 0, 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := New[string](Options{})
			runSteps(t, tb, "k", tc.limit, tc.burst, tc.steps)
		})
	}
}

// TestDeniedReserveSpendsNothing guards all-or-nothing admission: a refused
// handshake must not push the bucket's next token further away.
func TestDeniedReserveSpendsNothing(t *testing.T) {
	tb := New[string](Options{})
	ms := time.Millisecond
	runSteps(t, tb, "k", 1, 1, []step{
		{0, true, 0, 0},
		{250 * ms, false, 750 * ms, 0.25},
		{500 * ms, false, 500 * ms, 0.5},
		{500 * ms, false, 500 * ms, 0.5},
		{750 * ms, false, 250 * ms, 0.75},
		{1000 * ms, true, 0, 0}, // on time, as if no refusal had happened
	})
}

func TestBurstBelowOne(t *testing.T) {
	tb := New[string](Options{})
	res, r := tb.Reserve("k", t0, 10, 0)
	if r.OK || r.Full || r.RetryAfter != rate.InfDuration {
		t.Fatalf("burst 0: got %+v, want refusal with RetryAfter InfDuration", r)
	}
	res.Cancel(t0)
	if n := tb.Len(); n != 0 {
		t.Fatalf("refused new key left %d buckets, want 0", n)
	}
}

func TestCancel(t *testing.T) {
	tb := New[string](Options{})
	res1, _ := tb.Reserve("k", t0, 1, 2)
	res2, _ := tb.Reserve("k", t0, 1, 2)
	if got, _ := tb.Tokens("k", t0); got != 0 {
		t.Fatalf("after two Reserves: %v tokens, want 0", got)
	}
	res2.Cancel(t0)
	if got, _ := tb.Tokens("k", t0); got != 1 {
		t.Fatalf("after Cancel: %v tokens, want 1", got)
	}
	if _, r := tb.Reserve("k", t0, 1, 2); !r.OK {
		t.Fatalf("Reserve after Cancel: %+v, want OK", r)
	}
	// At a later time the token counts as used: Cancel restores nothing.
	res1.Cancel(at(time.Millisecond))
	if got, _ := tb.Tokens("k", at(time.Millisecond)); math.Abs(got-0.001) > 1e-9 {
		t.Fatalf("after late Cancel: %v tokens, want 0.001", got)
	}
	// The zero Reservation is a no-op.
	Reservation{}.Cancel(t0)
}

// TestCancelEarlierTime checks Cancel at the caller's own time when the
// shard clock had moved that Reserve to a later time: the token comes back,
// and the bucket's clock does not go back (which would refill it twice).
func TestCancelEarlierTime(t *testing.T) {
	tb := New[string](Options{MaxKeys: 64})    // one shard
	tb.Reserve("other", at(time.Second), 1, 1) // moves the shard clock
	tb.Reserve("k", t0, 1, 2)
	res, r := tb.Reserve("k", t0, 1, 2)
	if !r.OK {
		t.Fatalf("Reserve: %+v, want OK", r)
	}
	res.Cancel(t0)
	if got, _ := tb.Tokens("k", at(time.Second)); got != 1 {
		t.Fatalf("after Cancel: %v tokens at t0+1s, want 1", got)
	}
}

// TestTimeGoesBack guards against x/time/rate counting a refill twice when
// a call with an earlier time runs after one with a later time.
func TestTimeGoesBack(t *testing.T) {
	tb := New[string](Options{})
	ms := time.Millisecond
	runSteps(t, tb, "k", 1, 1, []step{
		{1000 * ms, true, 0, 0},
		{500 * ms, false, 1500 * ms, 0},   // taken as t0+1s; RetryAfter from t0+0.5s
		{1500 * ms, false, 500 * ms, 0.5}, // not 1: the half second before is not counted again
		{2000 * ms, true, 0, 0},
	})
}

func TestParameterUpdate(t *testing.T) {
	ms := time.Millisecond
	t.Run("limit and burst raised", func(t *testing.T) {
		tb := New[string](Options{})
		runSteps(t, tb, "k", 1, 3, []step{{0, true, 0, 2}, {0, true, 0, 1}, {0, true, 0, 0}})
		// One second at the old rate gives one token; from then on the new
		// rate applies. The raised burst is not filled at once.
		runSteps(t, tb, "k", 10, 5, []step{
			{1000 * ms, true, 0, 0},
			{1000 * ms, false, 100 * ms, 0},
			{1100 * ms, true, 0, 0},
			{10_000 * ms, true, 0, 4},
		})
	})
	t.Run("burst lowered", func(t *testing.T) {
		tb := New[string](Options{})
		runSteps(t, tb, "k", 1, 10, []step{{0, true, 0, 9}})
		runSteps(t, tb, "k", 1, 2, []step{{0, true, 0, 1}, {0, true, 0, 0}, {0, false, time.Second, 0}})
	})
	t.Run("limit lowered", func(t *testing.T) {
		tb := New[string](Options{})
		runSteps(t, tb, "k", 10, 1, []step{{0, true, 0, 0}})
		runSteps(t, tb, "k", 1, 1, []step{{0, false, time.Second, 0}, {500 * ms, false, 500 * ms, 0.5}})
	})
}

func TestFullTable(t *testing.T) {
	const limit, burst = 1, 2
	reserve := func(t *testing.T, tb *Table[string], k string, d time.Duration) Result {
		t.Helper()
		_, r := tb.Reserve(k, at(d), limit, burst)
		return r
	}
	t.Run("refilled bucket dropped first", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 1})
		reserve(t, tb, "a", 0)
		if r := reserve(t, tb, "b", 1*time.Second); !r.OK {
			t.Fatalf("b: %+v, want OK", r)
		}
		if _, ok := tb.Tokens("a", at(time.Second)); ok {
			t.Fatal("a still has a bucket")
		}
		if n := tb.Evictions(); n != 0 {
			t.Fatalf("Evictions = %d, want 0 (a had refilled)", n)
		}
		if r := reserve(t, tb, "c", 1*time.Second); !r.OK {
			t.Fatalf("c: %+v, want OK", r)
		}
		if n := tb.Evictions(); n != 1 {
			t.Fatalf("Evictions = %d, want 1 (b had not refilled)", n)
		}
		if n := tb.Len(); n != 1 {
			t.Fatalf("Len = %d, want 1", n)
		}
	})
	t.Run("refuse mode", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 1, RefuseWhenFull: true})
		reserve(t, tb, "a", 0)
		if r := reserve(t, tb, "b", 0); r.OK || !r.Full {
			t.Fatalf("b: %+v, want Full", r)
		}
		if r := reserve(t, tb, "a", 0); !r.OK {
			t.Fatalf("a (existing) in a full table: %+v, want OK", r)
		}
		if r := reserve(t, tb, "a", 0); r.OK || r.Full || r.RetryAfter != time.Second {
			t.Fatalf("a (existing, no token): %+v, want refusal with RetryAfter 1s", r)
		}
		if r := reserve(t, tb, "b", 1500*time.Millisecond); !r.Full {
			t.Fatalf("b at t0+1.5s: %+v, want Full (a has not refilled)", r)
		}
		if r := reserve(t, tb, "b", 2*time.Second); !r.OK {
			t.Fatalf("b at t0+2s: %+v, want OK (a has refilled)", r)
		}
		if n := tb.Evictions(); n != 0 {
			t.Fatalf("Evictions = %d, want 0", n)
		}
	})
}

// TestKeyFlood guards bounded memory: a flood of distinct keys never grows
// the table past MaxKeys, in either mode, nor the heap once the table is
// full; and refuse mode keeps serving the keys it holds.
func TestKeyFlood(t *testing.T) {
	const (
		maxKeys = 10_000
		flood   = 1_000_000
	)
	// The flood churns through a million short-lived buckets; collecting
	// less often keeps the test fast under the race detector.
	defer debug.SetGCPercent(debug.SetGCPercent(800))
	// The subtests run one after the other: the heap measured in evict
	// mode is the whole process's, which a flood running beside it would
	// grow.
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refuse=%v", refuse), func(t *testing.T) {
			tb := New[uint64](Options{MaxKeys: maxKeys, RefuseWhenFull: refuse})
			full := 0
			var heapFull uint64
			for i := range uint64(flood) {
				_, r := tb.Reserve(i, t0, 1, 5)
				if r.Full {
					full++
				}
				if i%10_000 == 0 {
					if n := tb.Len(); n > maxKeys {
						t.Fatalf("after %d keys: Len = %d > MaxKeys %d", i+1, n, maxKeys)
					}
				}
				if i == 2*maxKeys && !refuse {
					heapFull = heapAlloc()
				}
			}
			if n := tb.Len(); n != maxKeys {
				t.Fatalf("Len = %d, want %d (full)", n, maxKeys)
			}
			if refuse {
				if full != flood-maxKeys || tb.Evictions() != 0 {
					t.Fatalf("%d refused, %d evictions; want %d, 0", full, tb.Evictions(), flood-maxKeys)
				}
				if _, r := tb.Reserve(0, t0, 1, 5); !r.OK {
					t.Fatalf("first key after the flood: %+v, want OK", r)
				}
				return
			}
			if full != 0 || tb.Evictions() != flood-maxKeys {
				t.Fatalf("%d refused, %d evictions; want 0, %d", full, tb.Evictions(), flood-maxKeys)
			}
			// Deleted map entries and dropped buckets must not accumulate.
			// (The whole test binary's heap is measured, hence the slack.)
			if h := heapAlloc(); h > heapFull+heapFull/2 {
				t.Fatalf("heap grew from %d bytes (table full) to %d after the flood", heapFull, h)
			}
			runtime.KeepAlive(tb)
		})
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestExactBurstConcurrent races reservers on one key at one instant:
// exactly burst of them may win, and cancels give exactly their tokens back.
func TestExactBurstConcurrent(t *testing.T) {
	const burst, workers = 50, 200
	tb := New[string](Options{})
	var won atomic.Int64
	var start, wg sync.WaitGroup
	start.Add(1)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			if _, r := tb.Reserve("k", t0, 1, burst); r.OK {
				won.Add(1)
			}
		}()
	}
	start.Done()
	wg.Wait()
	if got := won.Load(); got != burst {
		t.Fatalf("%d Reserves succeeded, want %d", got, burst)
	}

	// Reserve and cancel concurrently: every cancelled token comes back
	// (all at one instant, so nothing is lost to later reservations).
	tb = New[string](Options{})
	won.Store(0)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, r := tb.Reserve("k", t0, 1, burst)
			if r.OK {
				res.Cancel(t0)
			}
		}()
	}
	wg.Wait()
	if got, _ := tb.Tokens("k", t0); got > burst {
		t.Fatalf("after reserve+cancel: %v tokens, more than burst %d", got, burst)
	}
}

func TestResize(t *testing.T) {
	tests := []struct {
		name      string
		from, to  int
		wantShard int
	}{
		{"shrink, same shards", 10_000, 5_000, 64},
		{"shrink, fewer shards", 10_000, 100, 1},
		{"grow, more shards", 100, 10_000, 64},
		{"default", 100, 0, 64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := New[uint64](Options{MaxKeys: tc.from})
			for i := range uint64(tc.from) {
				tb.Reserve(i, t0, 1, 2)
			}
			// The most recent key has spent a token: its state must survive.
			last := uint64(tc.from - 1)
			tb.Reserve(last, t0, 1, 2)
			tb.Resize(tc.to)
			set := tb.set.Load()
			if got := len(set.shards); got != tc.wantShard {
				t.Errorf("%d shards, want %d", got, tc.wantShard)
			}
			want := min(tc.from, orDefault(tc.to))
			if n := tb.Len(); n != want {
				t.Fatalf("Len = %d, want %d", n, want)
			}
			if got, want := tb.Evictions(), uint64(tc.from-want); got != want {
				t.Fatalf("Evictions = %d, want %d", got, want)
			}
			if got, ok := tb.Tokens(last, t0); !ok || got != 0 {
				t.Fatalf("Tokens(most recent key) = %v, %v; want 0, true", got, ok)
			}
			set = tb.set.Load()
			for i := range set.shards {
				if s := &set.shards[i]; s.lru.Len() > s.capacity || s.capacity != shardCapacity(set.maxKeys, len(set.shards), i) {
					t.Fatalf("shard %d: %d buckets, capacity %d", i, s.lru.Len(), s.capacity)
				}
			}
			for i := range uint64(2 * orDefault(tc.to)) {
				tb.Reserve(1<<32+i, t0, 1, 2)
			}
			if n := tb.Len(); n != orDefault(tc.to) {
				t.Fatalf("after refilling: Len = %d, want %d", n, orDefault(tc.to))
			}
		})
	}
}

// TestResizeConcurrent resizes back and forth across shard counts while
// reservers run; a key's bucket must never be duplicated or lost track of.
func TestResizeConcurrent(t *testing.T) {
	const burst, workers, rounds = 1000, 4, 1000
	tb := New[uint64](Options{MaxKeys: 10_000})
	stop := make(chan struct{})
	resized := make(chan int)
	go func() {
		i := 0
		for {
			select {
			case <-stop:
				resized <- i
				return
			default:
			}
			tb.Resize([]int{10_000, 100, 5_000, 64}[i%4])
			if n := tb.Len(); n > 10_000 {
				t.Errorf("Len = %d", n)
			}
			i++
		}
	}()
	var won atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				// Key 0 is reserved by everyone at t0 and must grant exactly
				// burst tokens however the shards change.
				if _, r := tb.Reserve(0, t0, 1e-9, burst); r.OK {
					won.Add(1)
				}
				tb.Reserve(uint64(w+1), t0, 1, 5)
				// Len and Evictions may visit a shard set that Resize
				// retires meanwhile.
				if n := tb.Len(); n > 10_000 {
					t.Errorf("Len = %d", n)
				}
				tb.Evictions()
			}
		}()
	}
	wg.Wait()
	close(stop)
	t.Logf("%d resizes", <-resized)
	if got := won.Load(); got != burst {
		t.Fatalf("%d tokens granted from key 0, want %d", got, burst)
	}
}

// TestLRUOrder guards the order of eviction: a full shard evicts its least
// recently reserved bucket, so a bucket used since survives a new key.
func TestLRUOrder(t *testing.T) {
	tb := New[string](Options{MaxKeys: 3}) // one shard
	reserve := func(k string) {
		t.Helper()
		if _, r := tb.Reserve(k, t0, 1, 2); !r.OK {
			t.Fatalf("%s: %+v, want OK", k, r)
		}
	}
	has := func(k string) bool { _, ok := tb.Tokens(k, t0); return ok }
	for _, k := range []string{"a", "b", "c"} {
		reserve(k)
	}
	reserve("a") // b is now the least recently used; Tokens is no use
	has("b")
	reserve("d") // evicts b
	reserve("e") // evicts c
	for k, want := range map[string]bool{"a": true, "b": false, "c": false, "d": true, "e": true} {
		if has(k) != want {
			t.Errorf("%s has a bucket: %v, want %v", k, has(k), want)
		}
	}
	if n := tb.Evictions(); n != 2 {
		t.Errorf("Evictions = %d, want 2", n)
	}
}

// TestCancelAfterSlotReuse guards Cancel against giving a token to the
// wrong bucket: once the reserved bucket is gone (evicted and its place
// taken by another key; moved by Resize) or has new parameters, Cancel does
// nothing; a bucket that Resize leaves where it is gets its token back.
func TestCancelAfterSlotReuse(t *testing.T) {
	t.Run("evicted, place taken", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 1})
		res, _ := tb.Reserve("a", t0, 1, 2)
		tb.Reserve("b", t0, 1, 2) // evicts a, takes its place
		res.Cancel(t0)
		if got, _ := tb.Tokens("b", t0); got != 1 {
			t.Fatalf("b: %v tokens after a's Cancel, want 1", got)
		}
	})
	t.Run("new parameters", func(t *testing.T) {
		tb := New[string](Options{})
		res, _ := tb.Reserve("a", t0, 1, 3)
		tb.Reserve("a", t0, 2, 3)
		res.Cancel(t0)
		if got, _ := tb.Tokens("a", t0); got != 1 {
			t.Fatalf("%v tokens after Cancel, want 1 (nothing restored)", got)
		}
	})
	t.Run("resized to other shards", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 100})
		res, _ := tb.Reserve("a", t0, 1, 3)
		tb.Resize(10_000)
		res.Cancel(t0)
		if got, _ := tb.Tokens("a", t0); got != 2 {
			t.Fatalf("%v tokens after Cancel, want 2 (nothing restored)", got)
		}
	})
	t.Run("shrunk, bucket kept in place", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 64}) // one shard
		res, _ := tb.Reserve("a", t0, 1, 3)
		tb.Resize(63) // the bucket fits and stays where it is
		res.Cancel(t0)
		if got, _ := tb.Tokens("a", t0); got != 3 {
			t.Fatalf("%v tokens after Cancel, want 3 (restored)", got)
		}
	})
	t.Run("shrunk, buckets moved", func(t *testing.T) {
		tb := New[string](Options{MaxKeys: 64})
		for i := range 63 {
			tb.Reserve(fmt.Sprint(i), t0, 1, 3)
		}
		// The most recently updated bucket is kept.
		ms := at(time.Millisecond)
		res, _ := tb.Reserve("a", ms, 1, 3)
		tb.Resize(63) // moves 63 of the 64 buckets into a new LRU
		res.Cancel(ms)
		if got, _ := tb.Tokens("a", ms); got != 2 {
			t.Fatalf("%v tokens after Cancel, want 2 (nothing restored)", got)
		}
	})
}

// TestCancelAfterLaterUse guards the rule for a Cancel that comes after
// the bucket was used at a later time: giving the whole token back would
// give more than if the reservation had never been made, because the
// bucket would have reached its burst in between.
func TestCancelAfterLaterUse(t *testing.T) {
	ms := time.Millisecond
	tb := New[string](Options{MaxKeys: 64})
	tb.Reserve("k", t0, 1, 2)                              // 2 -> 1
	res, _ := tb.Reserve("k", at(500*ms), 1, 2)            // 1.5 -> 0.5
	if _, r := tb.Reserve("k", at(1300*ms), 1, 2); !r.OK { // 1.3 -> 0.3
		t.Fatalf("Reserve at t0+1.3s: %+v", r)
	}
	// Without the reservation at t0+0.5s: 1.5 there, 2 (the burst) by
	// t0+1s, 1 after the Reserve at t0+1.3s. A whole token back would
	// make 1.3. The refill since the reservation, 0.8, is deducted.
	res.Cancel(at(500 * ms))
	if got, _ := tb.Tokens("k", at(1300*ms)); math.Abs(got-0.5) > 1e-9 {
		t.Fatalf("%v tokens after Cancel, want 0.5", got)
	}

	// What the previous implementation did: CancelAt at the reservation's
	// time moves the limiter's clock back and counts the refill from
	// there twice, ending above the 1 token of the counterfactual.
	lim := rate.NewLimiter(1, 2)
	lim.ReserveN(t0, 1)
	r := lim.ReserveN(at(500*ms), 1)
	lim.ReserveN(at(1300*ms), 1)
	r.CancelAt(at(500 * ms))
	if got := lim.TokensAt(at(1300 * ms)); math.Abs(got-1.3) > 1e-9 {
		t.Fatalf("x/time/rate: %v tokens after CancelAt, expected 1.3", got)
	}
}

// TestDistinctKeys guards against keys sharing a bucket: keys of every
// kind, in one shard and across shards, each get a bucket of their own.
// (Two keys share one only if their digests agree in 58 bits; see "Keys"
// in the package documentation.)
func TestDistinctKeys(t *testing.T) {
	const n = 50_000
	var ks []key
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		ks = append(ks,
			key{kind: 1, prefix: netip.PrefixFrom(a, 32)},
			key{kind: 2, prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 0}), 24)},
			key{kind: 3, str: fmt.Sprint(i)},
			key{kind: 3, str: a.String()},
		)
	}
	ks = append(ks, key{}) // the global key
	// One shard, full; and 64 shards with room to spare (a shard may fill
	// before the table does).
	for _, maxKeys := range []int{minShardKeys, 2 * len(ks)} {
		tb := New[key](Options{MaxKeys: maxKeys})
		ks := ks[:min(maxKeys, len(ks))]
		for i, k := range ks {
			// A burst of one: a key that shared another's bucket would
			// find it empty.
			if _, r := tb.Reserve(k, t0, 1e-9, 1); !r.OK {
				t.Fatalf("MaxKeys %d: key %d (%+v) refused: %+v", maxKeys, i, k, r)
			}
		}
		if n, shards := tb.Len(), len(tb.set.Load().shards); n != len(ks) || maxKeys == minShardKeys && shards != 1 {
			t.Fatalf("MaxKeys %d: Len = %d in %d shards, want %d", maxKeys, n, shards, len(ks))
		}
		for i, k := range ks {
			if got, ok := tb.Tokens(k, t0); !ok || got != 0 {
				t.Fatalf("MaxKeys %d: key %d holds %v, %v; want 0, true", maxKeys, i, got, ok)
			}
		}
	}
}

func TestShardCapacity(t *testing.T) {
	for _, maxKeys := range []int{1, 2, 63, 64, 127, 128, 129, 1000, 4095, 4096, 8192, 10_000, 100_000, 1_000_003} {
		n := shardCount(maxKeys)
		if n&(n-1) != 0 || n > maxShards || n > 1 && maxKeys/n < minShardKeys {
			t.Errorf("shardCount(%d) = %d", maxKeys, n)
		}
		sum := 0
		for i := range n {
			c := shardCapacity(maxKeys, n, i)
			if c < 1 {
				t.Errorf("maxKeys %d: shard %d has capacity %d", maxKeys, i, c)
			}
			sum += c
		}
		if sum != maxKeys {
			t.Errorf("maxKeys %d: capacities add up to %d", maxKeys, sum)
		}
	}
}

// key mirrors the layout of the module's keys.Key (which this package must
// not import), so that the cost of its digest, and the baseline's memory,
// match what policy stores.
type key struct {
	kind   uint8
	prefix netip.Prefix
	str    string
}

// ipKeys returns n distinct IPv4 keys.
func ipKeys(n int) []key {
	ks := make([]key, n)
	for i := range ks {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		ks[i] = key{kind: 1, prefix: netip.PrefixFrom(a, 32)}
	}
	return ks
}

const poolSize = 100_000

// order returns n pseudo-random indexes into a pool of poolSize keys. The
// keys are drawn independently, not in rounds: in rounds (each key once
// per round), a shard holding a few more keys than its share of MaxKeys
// would be LRU's worst case and miss every time.
func order(n int) []int32 {
	idx := make([]int32, n)
	x := uint64(1)
	for i := range idx {
		x = mix(x + 0x9e3779b97f4a7c15)
		idx[i] = int32(x % poolSize)
	}
	return idx
}

// BenchmarkReserve measures the hit path: every key of a pool of 100,000
// has a bucket with tokens to spare. With MaxKeys 100,000 about 1% of the
// keys do not fit their shard's share (see doc.go), and those Reserves
// create a bucket; "roomy" has MaxKeys 200,000, so that every Reserve hits.
func BenchmarkReserve(b *testing.B) {
	pool := ipKeys(poolSize)
	idx := order(1 << 20)
	const mask = 1<<20 - 1
	for _, tc := range []struct {
		name    string
		maxKeys int
	}{{"", poolSize}, {"roomy/", 2 * poolSize}} {
		tb := New[key](Options{MaxKeys: tc.maxKeys})
		for _, k := range pool {
			tb.Reserve(k, t0, 1, math.MaxInt32)
		}
		b.Run(tc.name+"serial", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tb.Reserve(pool[idx[i&mask]], t0, 1, math.MaxInt32)
				i++
			}
		})
		b.Run(tc.name+"parallel", func(b *testing.B) {
			b.ReportAllocs()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(7919))
				for pb.Next() {
					tb.Reserve(pool[idx[i&mask]], t0, 1, math.MaxInt32)
					i++
				}
			})
		})
		b.Run(tc.name+"cancel/serial", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				res, _ := tb.Reserve(pool[idx[i&mask]], t0, 1, math.MaxInt32)
				res.Cancel(t0)
				i++
			}
		})
		b.Run(tc.name+"cancel/parallel", func(b *testing.B) {
			b.ReportAllocs()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(7919))
				for pb.Next() {
					res, _ := tb.Reserve(pool[idx[i&mask]], t0, 1, math.MaxInt32)
					res.Cancel(t0)
					i++
				}
			})
		})
	}
}

// BenchmarkReserveHot is the hit path over 1,000 keys, whose buckets stay
// in the CPU caches: the cost of the code, not of memory latency.
func BenchmarkReserveHot(b *testing.B) {
	const hot = 1000
	pool := ipKeys(hot)
	tb := New[key](Options{MaxKeys: poolSize})
	for _, k := range pool {
		tb.Reserve(k, t0, 1, math.MaxInt32)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tb.Reserve(pool[i%hot], t0, 1, math.MaxInt32)
		i++
	}
}

// BenchmarkReserveDenied measures a refusal: reserve, read the delay,
// cancel.
func BenchmarkReserveDenied(b *testing.B) {
	pool := ipKeys(poolSize)
	tb := New[key](Options{MaxKeys: 2 * poolSize})
	for _, k := range pool {
		tb.Reserve(k, t0, 1, 1)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, r := tb.Reserve(pool[i%poolSize], t0, 1, 1); r.OK {
			b.Fatal("granted")
		}
		i++
	}
}

// BenchmarkReserveMiss measures new keys arriving at a full table: each
// Reserve creates a bucket and evicts one (evict mode), drops a refilled
// one, or is refused (refuse mode).
func BenchmarkReserveMiss(b *testing.B) {
	for _, tc := range []struct {
		name   string
		refuse bool
		step   time.Duration // time between Reserves
	}{
		{"evict", false, 0},
		{"refilled", false, time.Second},
		{"refuse", true, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tb := New[uint64](Options{MaxKeys: poolSize, RefuseWhenFull: tc.refuse})
			for i := range uint64(poolSize) {
				tb.Reserve(i, t0, 1, 1)
			}
			b.ReportAllocs()
			now := t0
			i := uint64(poolSize)
			for b.Loop() {
				now = now.Add(tc.step)
				tb.Reserve(i, now, 1, 1)
				i++
			}
		})
	}
}

// baseline is the usual per-key limiter the table is measured against: a
// map of rate.Limiters under one mutex. The map lock is held only for the
// lookup; ReserveN runs under the limiter's own lock, which lets two cores
// work on two keys at once (holding the map lock throughout is slower in
// parallel). A refusal is cancelled at once, as the table does.
type baseline struct {
	mu sync.Mutex
	m  map[key]*rate.Limiter
}

func (b *baseline) reserve(k key, now time.Time, limit rate.Limit, burst int) bool {
	b.mu.Lock()
	lim, ok := b.m[k]
	if !ok {
		lim = rate.NewLimiter(limit, burst)
		b.m[k] = lim
	}
	b.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return false
	}
	if r.DelayFrom(now) > 0 {
		r.CancelAt(now)
		return false
	}
	return true
}

// BenchmarkBucketVsBaseline measures the table's hit path beside the
// baseline (see baseline) in the same run: a pool of 100,000 keys drawn at
// random, MaxKeys 100,000 (so about 1% of the table's Reserves make room
// for a key that did not fit its shard's share; the baseline's map has no
// bound), every key with tokens to spare.
func BenchmarkBucketVsBaseline(b *testing.B) {
	pool := ipKeys(poolSize)
	idx := order(1 << 20)
	const mask = 1<<20 - 1
	const limit, burst = 1, math.MaxInt32
	tb := New[key](Options{MaxKeys: poolSize})
	base := &baseline{m: make(map[key]*rate.Limiter)}
	for _, k := range pool {
		tb.Reserve(k, t0, limit, burst)
		base.reserve(k, t0, limit, burst)
	}
	impls := []struct {
		name    string
		reserve func(k key) bool
	}{
		{"ours", func(k key) bool { _, r := tb.Reserve(k, t0, limit, burst); return r.OK }},
		{"baseline", func(k key) bool { return base.reserve(k, t0, limit, burst) }},
	}
	for _, impl := range impls {
		b.Run(impl.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if !impl.reserve(pool[idx[i&mask]]) {
					b.Fatal("refused")
				}
				i++
			}
		})
		b.Run(impl.name+"/parallel", func(b *testing.B) {
			// The machine's cache-line handoff before and after (the slower
			// is reported): parallel figures follow it (docs/benchmarks.md).
			before := handoff.RoundTrip(handoff.BenchTurns)
			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(7919))
				for pb.Next() {
					if !impl.reserve(pool[idx[i&mask]]) {
						panic("refused")
					}
					i++
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(max(before, handoff.RoundTrip(handoff.BenchTurns)).Nanoseconds()), "handoff-ns")
		})
	}
}

// BenchmarkMemoryPerKey reports the heap held per bucket after n keys went
// into a table of MaxKeys n, for 100,000 and 1,000,000 (about 1% and 0.4%
// of the keys do not fit their shard's share; the figure is per bucket
// held), and the same for the baseline's map of rate.Limiters.
func BenchmarkMemoryPerKey(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		pool := ipKeys(n)
		b.Run(fmt.Sprintf("ours/keys=%d", n), func(b *testing.B) {
			var perKey float64
			for b.Loop() {
				before := heapAlloc()
				tb := New[key](Options{MaxKeys: n})
				for _, k := range pool {
					tb.Reserve(k, t0, 1, 5)
				}
				after := heapAlloc()
				perKey = float64(after-before) / float64(tb.Len())
				runtime.KeepAlive(tb)
			}
			b.ReportMetric(perKey, "B/key")
		})
		b.Run(fmt.Sprintf("baseline/keys=%d", n), func(b *testing.B) {
			var perKey float64
			for b.Loop() {
				before := heapAlloc()
				base := &baseline{m: make(map[key]*rate.Limiter)}
				for _, k := range pool {
					base.reserve(k, t0, 1, 5)
				}
				after := heapAlloc()
				perKey = float64(after-before) / float64(len(base.m))
				runtime.KeepAlive(base)
			}
			b.ReportMetric(perKey, "B/key")
		})
	}
}
