package buckets

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// DefaultMaxKeys is the number of buckets a Table keeps when
// Options.MaxKeys is zero or negative.
const DefaultMaxKeys = 100_000

const (
	// maxShards bounds the number of shards of a Table (a power of two).
	maxShards = 64
	// minShardKeys is the fewest buckets a shard is given when a Table has
	// more than one shard: each shard is an LRU of its own, and an LRU of a
	// handful of entries would evict almost at random.
	minShardKeys = 64
	// cacheLine is the padding between the hot fields of neighbouring
	// shards, so that two cores locking two shards do not share a line.
	cacheLine = 64
)

// Options configures a Table. The zero value is a table of DefaultMaxKeys
// buckets that evicts the least recently used bucket when full.
type Options struct {
	// MaxKeys bounds the number of buckets the table keeps; zero or less
	// means DefaultMaxKeys. Len never exceeds it. Each shard of the table
	// holds a fixed share of MaxKeys, so a new key may find its shard full
	// while the table as a whole is about 1% short of MaxKeys.
	MaxKeys int
	// RefuseWhenFull makes a full table refuse keys it does not hold
	// (Result.Full) instead of evicting a bucket that has not refilled.
	// Keys the table holds are always served.
	RefuseWhenFull bool
}

// Result is the outcome of Table.Reserve.
type Result struct {
	// OK is true when a token was taken.
	OK bool
	// Full is true when the key has no bucket and the table, full and in
	// refuse mode, would not make one. Nothing was taken.
	Full bool
	// RetryAfter is, when neither OK nor Full, the time from now until the
	// bucket holds a token again at its current rate: rate.InfDuration when
	// it never will (a limit of zero, or a burst below one). Zero otherwise.
	RetryAfter time.Duration
}

// Reservation is a token taken by Table.Reserve, which Cancel gives back.
// It is a small value; its zero value is a reservation of nothing, whose
// Cancel does nothing.
type Reservation struct {
	r  rate.Reservation
	at time.Time // the time the token was taken
}

// Cancel gives the token back to its bucket, as rate.Reservation.CancelAt
// does. Call it with the time given to Reserve (or an earlier one, which is
// taken as that time): at a later time the token counts as used and Cancel
// does nothing.
//
// If other tokens were taken from the bucket after this one, Cancel
// restores less than one token; and if the bucket has since been dropped
// from the table, the token is not restored at all. Both err toward
// admitting fewer, never more. Cancel a reservation at most once: like
// CancelAt, a second Cancel of the same reservation (or of a copy) gives
// the token back again.
func (r Reservation) Cancel(now time.Time) {
	if now.Before(r.at) {
		now = r.at
	}
	r.r.CancelAt(now)
}

// take reserves one token from lim at now, and cancels the reservation at
// once if the token is not available now. Its caller holds the shard lock,
// so between the reservation and its cancellation no other token is taken
// from lim, and a refusal spends nothing.
func take(lim *rate.Limiter, now time.Time) (Reservation, Result) {
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return Reservation{}, Result{RetryAfter: rate.InfDuration}
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return Reservation{}, Result{RetryAfter: d}
	}
	return Reservation{r: *r, at: now}, Result{OK: true}
}

// refilled reports whether lim is full at now: such a bucket behaves
// exactly like a new one, so dropping it loses nothing.
func refilled(lim *rate.Limiter, now time.Time) bool {
	return lim.TokensAt(now) >= float64(lim.Burst())
}

// bucketLRU is the unlocked core of a Table: the buckets of one shard, at
// most capacity of them, least recently used first out. Every method
// requires the shard's lock.
type bucketLRU[K comparable] struct {
	lru       *simplelru.LRU[K, *rate.Limiter]
	capacity  int
	clock     time.Time // the latest time seen; earlier times are taken as it
	evictions uint64    // buckets dropped before they had refilled
}

func newBucketLRU[K comparable](capacity int, clock time.Time) bucketLRU[K] {
	// The size given to simplelru is only its own limit; bucketLRU makes
	// room itself before every Add, so simplelru never evicts silently.
	lru, err := simplelru.NewLRU[K, *rate.Limiter](capacity, nil)
	if err != nil {
		panic("buckets: " + err.Error()) // capacity >= 1 by construction
	}
	return bucketLRU[K]{lru: lru, capacity: capacity, clock: clock}
}

// advance moves the clock to now and returns the time to act at: now, or
// the clock if now is earlier. x/time/rate counts the time between a
// bucket's last update and now twice if now goes back; a monotone clock per
// shard rules that out.
func (b *bucketLRU[K]) advance(now time.Time) time.Time {
	if now.Before(b.clock) {
		return b.clock
	}
	b.clock = now
	return now
}

// reserve is Table.Reserve for the keys of this shard.
func (b *bucketLRU[K]) reserve(k K, now time.Time, limit rate.Limit, burst int, refuse bool) (Reservation, Result) {
	at := b.advance(now)
	res, r := b.reserveAt(k, at, limit, burst, refuse)
	if r.RetryAfter > 0 && r.RetryAfter != rate.InfDuration {
		r.RetryAfter += at.Sub(now) // from the caller's now
	}
	return res, r
}

func (b *bucketLRU[K]) reserveAt(k K, now time.Time, limit rate.Limit, burst int, refuse bool) (Reservation, Result) {
	if lim, ok := b.lru.Get(k); ok {
		// Policy reloads and per-user tiers reach existing buckets here.
		if lim.Limit() != limit {
			lim.SetLimitAt(now, limit)
		}
		if lim.Burst() != burst {
			lim.SetBurstAt(now, burst)
		}
		return take(lim, now)
	}

	full := b.lru.Len() >= b.capacity
	if full {
		if _, oldest, _ := b.lru.GetOldest(); refilled(oldest, now) {
			b.lru.RemoveOldest() // no state lost: not an eviction
			full = false
		} else if refuse {
			return Reservation{}, Result{Full: true}
		}
	}
	// A new bucket starts full. It is only kept if the token is granted:
	// a refusal (burst below one) leaves no state and evicts nothing.
	lim := rate.NewLimiter(limit, burst)
	res, r := take(lim, now)
	if !r.OK {
		return res, r
	}
	if full {
		b.lru.RemoveOldest()
		b.evictions++
	}
	b.lru.Add(k, lim)
	return res, r
}

// add inserts a bucket moved from another shard, making room as resize does.
func (b *bucketLRU[K]) add(k K, lim *rate.Limiter) {
	if b.lru.Len() >= b.capacity {
		b.dropOldest()
	}
	b.lru.Add(k, lim)
}

// resize sets the capacity, dropping the least recently used buckets that
// no longer fit.
func (b *bucketLRU[K]) resize(capacity int) {
	for b.lru.Len() > capacity {
		b.dropOldest()
	}
	b.lru.Resize(capacity)
	b.capacity = capacity
}

// dropOldest drops the least recently used bucket, counting it as an
// eviction unless it had refilled at the latest time the shard has seen.
func (b *bucketLRU[K]) dropOldest() {
	if _, lim, ok := b.lru.RemoveOldest(); ok && !refilled(lim, b.clock) {
		b.evictions++
	}
}

// shard is one lock and its buckets.
type shard[K comparable] struct {
	mu      sync.Mutex
	retired bool // replaced by Resize: look the shard up again
	bucketLRU[K]
	_ [cacheLine]byte
}

// shardSet is the shards of a Table for one MaxKeys.
type shardSet[K comparable] struct {
	shards  []shard[K]
	mask    uint64 // len(shards) - 1
	maxKeys int
	carried uint64 // evictions counted by shard sets this one replaced
}

// shardCount returns the number of shards for maxKeys buckets: a power of
// two, at most maxShards, with at least minShardKeys buckets per shard
// unless there is only one shard.
func shardCount(maxKeys int) int {
	n := 1
	for n < maxShards && 2*n*minShardKeys <= maxKeys {
		n *= 2
	}
	return n
}

// shardCapacity returns the capacity of shard i of n for maxKeys buckets.
// The capacities add up to exactly maxKeys, and each is at least one.
func shardCapacity(maxKeys, n, i int) int {
	c := maxKeys / n
	if i < maxKeys%n {
		c++
	}
	return c
}

func newShardSet[K comparable](maxKeys int, clock time.Time, carried uint64) *shardSet[K] {
	n := shardCount(maxKeys)
	s := &shardSet[K]{
		shards:  make([]shard[K], n),
		mask:    uint64(n - 1),
		maxKeys: maxKeys,
		carried: carried,
	}
	for i := range s.shards {
		s.shards[i].bucketLRU = newBucketLRU[K](shardCapacity(maxKeys, n, i), clock)
	}
	return s
}

// Table keeps one token bucket per key, at most MaxKeys of them. Create one
// with [New]; the zero value is not usable. A Table is safe for concurrent
// use.
type Table[K comparable] struct {
	hash     func(K) uint64
	refuse   bool
	resizeMu sync.Mutex // serialises Resize
	set      atomic.Pointer[shardSet[K]]
}

// New returns an empty Table that spreads keys over its shards by hash.
// hash must be deterministic and well mixed in its low bits (a maphash
// under a per-process seed is); it must not be nil.
func New[K comparable](opts Options, hash func(K) uint64) *Table[K] {
	if hash == nil {
		panic("buckets: New with a nil hash function")
	}
	t := &Table[K]{hash: hash, refuse: opts.RefuseWhenFull}
	t.set.Store(newShardSet[K](orDefault(opts.MaxKeys), time.Time{}, 0))
	return t
}

func orDefault(maxKeys int) int {
	if maxKeys <= 0 {
		return DefaultMaxKeys
	}
	return maxKeys
}

// lock returns k's shard, locked.
func (t *Table[K]) lock(k K) *shard[K] {
	h := t.hash(k)
	for {
		set := t.set.Load()
		s := &set.shards[h&set.mask]
		s.mu.Lock()
		if !s.retired {
			return s
		}
		s.mu.Unlock() // Resize has replaced the set since the Load
	}
}

// Reserve takes one token from k's bucket at now, creating the bucket (full,
// burst tokens) if k has none. limit and burst are the bucket's parameters,
// passed on every call: an existing bucket with other parameters is updated
// at now first (rate.Limiter.SetLimitAt, SetBurstAt), which is how a policy
// reload or a per-user tier reaches it. A raised burst does not fill the
// bucket at once; it refills at the rate.
//
// When the result is OK, the Reservation gives the token back if the
// caller's other checks fail. Otherwise nothing was spent and the
// Reservation is the zero value. When k has no bucket and the table is
// full, the least recently used bucket is dropped if it has refilled;
// otherwise the table evicts it (counted by Evictions) or, in refuse mode,
// returns Result.Full.
func (t *Table[K]) Reserve(k K, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	s := t.lock(k)
	res, r := s.reserve(k, now, limit, burst, t.refuse)
	s.mu.Unlock()
	return res, r
}

// Tokens returns the tokens in k's bucket at now, and false if k has no
// bucket (a key without a bucket would start with a full one). It does not
// count as a use of the bucket.
func (t *Table[K]) Tokens(k K, now time.Time) (float64, bool) {
	s := t.lock(k)
	lim, ok := s.lru.Peek(k)
	s.mu.Unlock()
	if !ok {
		return 0, false
	}
	return lim.TokensAt(now), true
}

// Len returns the number of buckets the table holds, never more than its
// MaxKeys.
func (t *Table[K]) Len() int {
	set := t.set.Load()
	n := 0
	for i := range set.shards {
		s := &set.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// Evictions returns the number of buckets dropped before they had refilled:
// by Reserve to make room in evict mode, and by Resize to shrink the table.
// Each is state lost: the key's next handshake finds a full bucket.
func (t *Table[K]) Evictions() uint64 {
	set := t.set.Load()
	n := set.carried
	for i := range set.shards {
		s := &set.shards[i]
		s.mu.Lock()
		n += s.evictions
		s.mu.Unlock()
	}
	return n
}

// Resize sets the table's MaxKeys (zero or less: DefaultMaxKeys), dropping
// the least recently used buckets that no longer fit. Resize takes no time:
// a dropped bucket counts as an eviction unless it had refilled at the
// latest time the table has seen.
//
// When the new size calls for another number of shards, Resize moves every
// bucket into a new set of shards, holding every shard lock meanwhile; the
// order of use is kept within each old shard and approximated across them.
func (t *Table[K]) Resize(maxKeys int) {
	maxKeys = orDefault(maxKeys)
	t.resizeMu.Lock()
	defer t.resizeMu.Unlock()
	old := t.set.Load()
	if maxKeys == old.maxKeys {
		return
	}
	n := len(old.shards)
	if shardCount(maxKeys) == n {
		for i := range old.shards {
			s := &old.shards[i]
			s.mu.Lock()
			s.resize(shardCapacity(maxKeys, n, i))
			s.mu.Unlock()
		}
		old.maxKeys = maxKeys // guarded by resizeMu
		return
	}

	for i := range old.shards {
		old.shards[i].mu.Lock()
	}
	// Order the buckets from least to most recently used, as far as the
	// old shards tell: each shard knows its own order, and a bucket's rank
	// within its shard, as a fraction of the shard's length, stands in for
	// its place in the global order.
	type moved struct {
		rank float64
		key  K
		lim  *rate.Limiter
	}
	var all []moved
	var clock time.Time
	carried := old.carried
	for i := range old.shards {
		s := &old.shards[i]
		if s.clock.After(clock) {
			clock = s.clock
		}
		carried += s.evictions
		keys, lims := s.lru.Keys(), s.lru.Values() // oldest first
		for j, k := range keys {
			all = append(all, moved{float64(j+1) / float64(len(keys)), k, lims[j]})
		}
	}
	slices.SortStableFunc(all, func(a, b moved) int { return cmp.Compare(a.rank, b.rank) })
	next := newShardSet[K](maxKeys, clock, 0)
	for _, m := range all {
		next.shards[t.hash(m.key)&next.mask].add(m.key, m.lim)
	}
	for i := range next.shards {
		carried += next.shards[i].evictions
		next.shards[i].evictions = 0
	}
	next.carried = carried
	t.set.Store(next)
	for i := range old.shards {
		old.shards[i].retired = true
		old.shards[i].mu.Unlock()
	}
}
