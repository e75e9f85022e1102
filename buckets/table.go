package buckets

// This file holds the whole algorithm, in three layers:
//
//   - token arithmetic on one bucket (bucket.tokensAt, take, withParams,
//     cancel, refilled and durationFromTokens): pure functions of a bucket
//     and a time, which follow golang.org/x/time/rate for the one-token
//     reservations the table makes;
//   - core, the unlocked heart of a shard: a simplelru.LRU from key to
//     bucket, and what to drop when it is full;
//   - shard, shardSet and Table: a mutex around each core, the shards of
//     one MaxKeys, and the exported API.

import (
	"cmp"
	"math"
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
	// handful of buckets would drop almost at random.
	minShardKeys = 64
	// refuseLook bounds the buckets a full shard in refuse mode looks at
	// for one that has refilled, for one new key: a flood of new keys pays
	// for each of them.
	refuseLook = 4
)

// Options configures a Table. The zero value is a table of DefaultMaxKeys
// buckets that drops the least recently used bucket when full (see
// "Bounded memory and the full table" in the package documentation).
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
// It is a small value that points at the bucket, its shard's lock and the
// bucket's generation, with the time the token was taken; its zero value
// is a reservation of nothing, whose Cancel does nothing.
type Reservation struct {
	g   *guard
	b   *bucket
	at  int64  // when the token was taken, in nanoseconds since the table's epoch
	gen uint32 // the bucket's generation then; new parameters change it
}

// Cancel gives the token back to its bucket. Call it with the time given
// to Reserve (or an earlier one, which is taken as that time): at a later
// time the token counts as used and Cancel does nothing.
//
// When nothing happened to the bucket at a later time than the
// reservation, Cancel restores the whole token (capped at the burst), and
// the bucket is exactly as if the reservation had not been made. When the
// bucket has since been used at a later time (the shard's clock moved on),
// Cancel restores the token minus what the bucket refilled in between, as
// rate.Reservation.CancelAt does, which may be nothing; when the bucket
// has since been dropped or moved, or its limit or burst changed, it
// restores nothing. These err toward admitting fewer, never more (see
// "Giving a token back" in the package documentation). Cancel a
// reservation at most once: a second Cancel of the same reservation (or of
// a copy) gives the token back again.
func (r Reservation) Cancel(now time.Time) {
	if r.b == nil || since(now, r.g.epoch) > r.at {
		return
	}
	r.g.mu.Lock()
	if r.b.gen == r.gen {
		*r.b = r.b.cancel(r.at)
	}
	r.g.mu.Unlock()
}

// since returns t as nanoseconds since epoch. time.Time.Sub uses the
// monotonic clock readings when both times have one (time.Now's do), so a
// step of the wall clock neither refills nor freezes the buckets; it
// saturates at about ±292 years.
func since(t, epoch time.Time) int64 { return int64(t.Sub(epoch)) }

// bucket is one key's token bucket: 32 bytes.
type bucket struct {
	tokens float64    // the tokens at last
	last   int64      // the bucket's latest update, in ns since the epoch
	limit  rate.Limit // tokens per second
	burst  int32
	gen    uint32 // changes with the parameters: older tokens are not given back
}

// tokensAt returns the tokens in b at t, as rate.Limiter.advance computes
// them: t before the last update counts as the last update.
func (b bucket) tokensAt(t int64) float64 {
	tokens := b.tokens
	if b.limit > 0 && t > b.last {
		elapsed := time.Duration(t - b.last)
		if elapsed < 0 { // more than 292 years
			elapsed = math.MaxInt64
		}
		tokens += elapsed.Seconds() * float64(b.limit)
	}
	return min(tokens, float64(b.burst))
}

// withParams returns b with a new limit and burst at t, as rate.Limiter's
// SetLimitAt and SetBurstAt make them: the tokens are brought to t under
// the old parameters. Its generation changes: tokens taken under the old
// parameters are not given back.
func (b bucket) withParams(t int64, limit rate.Limit, burst int32) bucket {
	return bucket{tokens: b.tokensAt(t), last: t, limit: limit, burst: burst, gen: b.gen + 1}
}

// take takes one token from b at t if it holds one, as ReserveN(t, 1)
// would, followed by CancelAt(t) when the reservation's delay is not zero:
// a refused take spends nothing and returns that delay.
func (b bucket) take(t int64) (bucket, Result) {
	if b.limit == rate.Inf {
		return b, Result{OK: true} // x/time/rate neither counts nor needs tokens
	}
	if b.burst < 1 {
		return b, Result{RetryAfter: rate.InfDuration} // never: n > burst
	}
	tokens := b.tokensAt(t)
	b.last = t
	left := tokens - 1
	var wait time.Duration
	if left < 0 {
		wait = durationFromTokens(-left, b.limit)
	}
	if wait == 0 { // x/time/rate grants a deficit worth less than 1 ns too
		b.tokens = left
		return b, Result{OK: true}
	}
	b.tokens = tokens
	return b, Result{RetryAfter: wait}
}

// cancel returns b with a token taken at at given back: the whole token,
// capped at the burst, which is exact when b has not been updated at a
// later time since; else, updated at L, one token minus the refill from at
// to L (x/time/rate's rule), which leaves b with no more than it would hold
// without the reservation. See "Giving a token back" in the package
// documentation.
func (b bucket) cancel(at int64) bucket {
	restore := 1.0
	if b.last > at && b.limit > 0 {
		restore -= time.Duration(b.last-at).Seconds() * float64(b.limit)
		if restore <= 0 {
			return b
		}
	}
	b.tokens = min(b.tokens+restore, float64(b.burst))
	return b
}

// refilled reports whether b is full at t: such a bucket behaves exactly
// like a new one, so dropping it loses nothing.
func (b bucket) refilled(t int64) bool {
	return b.tokensAt(t) >= float64(b.burst)
}

// durationFromTokens is the time limit takes to produce tokens, as
// rate.Limit.durationFromTokens computes it.
func durationFromTokens(tokens float64, limit rate.Limit) time.Duration {
	if limit <= 0 {
		return rate.InfDuration
	}
	d := tokens / float64(limit) * float64(time.Second)
	if d > float64(math.MaxInt64) {
		return rate.InfDuration
	}
	return time.Duration(d)
}

// core is the unlocked heart of a shard: its buckets, at most capacity of
// them, in an LRU from key to bucket, least recently reserved first out.
// Every method requires the shard's lock.
//
// The LRU holds pointers, so that a hit finds and updates its bucket with
// one map lookup, and a Reservation can point at its bucket. A bucket that
// leaves the LRU is never put back: a Reservation of it then updates a
// bucket no one reads. The core makes room itself before each Add, so the
// LRU never evicts on its own.
type core[K comparable] struct {
	lru       *simplelru.LRU[K, *bucket]
	capacity  int    // the most buckets the shard may hold
	refuse    bool   // Options.RefuseWhenFull
	clock     int64  // the latest time seen; earlier times are taken as it
	evictions uint64 // buckets dropped before they had refilled
}

func newCore[K comparable](capacity int, clock int64, refuse bool) core[K] {
	lru, err := simplelru.NewLRU[K, *bucket](capacity, nil)
	if err != nil {
		panic("buckets: " + err.Error()) // capacity >= 1 by construction
	}
	return core[K]{lru: lru, capacity: capacity, refuse: refuse, clock: clock}
}

// advance moves the clock to now and returns the time to act at: now, or
// the clock if now is earlier. x/time/rate counts the time between a
// bucket's last update and now twice if now goes back; a monotone clock per
// shard rules that out.
func (c *core[K]) advance(now int64) int64 {
	if now < c.clock {
		return c.clock
	}
	c.clock = now
	return now
}

// reserve is Table.Reserve for the keys of this shard. It returns the time
// it acted at, and the bucket a token was taken from (nil when there is
// none to give back: refused, or a limit of rate.Inf).
func (c *core[K]) reserve(k K, now int64, limit rate.Limit, burst int32) (int64, *bucket, Result) {
	at := c.advance(now)
	b, ok := c.lru.Get(k)
	if !ok {
		// A new bucket starts full, so the take succeeds unless the burst
		// is below one; then no bucket is made and none is dropped.
		if limit != rate.Inf && burst < 1 {
			return at, nil, Result{RetryAfter: rate.InfDuration}
		}
		if !c.makeRoom() {
			return at, nil, Result{Full: true}
		}
		b = &bucket{tokens: float64(burst), last: at, limit: limit, burst: burst}
		c.lru.Add(k, b)
	} else if b.limit != limit || b.burst != burst {
		// Policy reloads and per-user tiers reach existing buckets here.
		*b = b.withParams(at, limit, burst)
	}
	var r Result
	*b, r = b.take(at)
	if !r.OK || limit == rate.Inf {
		return at, nil, r
	}
	return at, b, r
}

// makeRoom makes room for a new bucket if the shard is full, and reports
// whether there is room. In evict mode the least recently used bucket goes
// (an eviction unless it has refilled). In refuse mode only a bucket that
// has refilled goes: makeRoom looks at up to refuseLook buckets from the
// least recently used end, moving each that has not refilled to the other
// end so that the next new key looks at others, and reports false if none
// of them had.
func (c *core[K]) makeRoom() bool {
	if c.lru.Len() < c.capacity {
		return true
	}
	if !c.refuse {
		c.dropOldest()
		return true
	}
	for range refuseLook {
		k, b, _ := c.lru.GetOldest()
		if b.refilled(c.clock) {
			c.lru.RemoveOldest()
			return true
		}
		c.lru.Get(k)
	}
	return false
}

// len returns the number of buckets in c: none once Resize has retired
// its shard.
func (c *core[K]) len() int {
	if c.lru == nil {
		return 0
	}
	return c.lru.Len()
}

// dropOldest drops the least recently used bucket, counting it as an
// eviction unless it has refilled at the latest time the shard has seen.
func (c *core[K]) dropOldest() {
	if _, b, ok := c.lru.RemoveOldest(); ok && !b.refilled(c.clock) {
		c.evictions++
	}
}

// moved is a bucket on its way to another core, with its key.
type moved[K comparable] struct {
	k K
	b bucket
}

// drain appends to out the buckets of c that have not refilled at t; the
// others carry no state and are left behind.
func (c *core[K]) drain(out []moved[K], t int64) []moved[K] {
	keys, buckets := c.lru.Keys(), c.lru.Values()
	for i, b := range buckets {
		if !b.refilled(t) {
			out = append(out, moved[K]{keys[i], *b})
		}
	}
	return out
}

// oldestFirst orders moved buckets for add: least recently updated first
// and, of those updated at the same time, the fullest, so that a core that
// cannot take them all drops those that carry the least state.
func oldestFirst[K comparable](a, b moved[K]) int {
	if c := cmp.Compare(a.b.last, b.b.last); c != 0 {
		return c
	}
	return cmp.Compare(b.b.tokens, a.b.tokens)
}

// add puts a copy of a moved bucket into c as its most recently used,
// dropping the least recently used if c is full. The copy has a new
// address: reservations of the bucket from before the move give nothing
// back.
func (c *core[K]) add(m moved[K]) {
	if c.lru.Len() >= c.capacity {
		c.dropOldest()
	}
	b := m.b
	c.lru.Add(m.k, &b)
}

// resize sets c's capacity. When the buckets no longer fit, those that
// have refilled are dropped, and the others move into a new LRU in
// oldestFirst order, dropping the oldest that do not fit (so that the
// memory of the old map is given back too).
func (c *core[K]) resize(capacity int) {
	if c.lru.Len() <= capacity {
		c.lru.Resize(capacity)
		c.capacity = capacity
		return
	}
	all := c.drain(nil, c.clock)
	slices.SortStableFunc(all, oldestFirst)
	next := newCore[K](capacity, c.clock, c.refuse)
	next.evictions = c.evictions
	for _, m := range all {
		next.add(m)
	}
	*c = next
}

// guard is what a Reservation needs of its shard: the lock, and the
// table's epoch to read times by.
type guard struct {
	mu    sync.Mutex
	epoch time.Time // read-only
}

// shard is one lock and its buckets.
type shard[K comparable] struct {
	guard
	retired bool // replaced by Resize: look the shard up again
	core[K]
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

func newShardSet[K comparable](maxKeys int, epoch time.Time, clock int64, refuse bool) *shardSet[K] {
	n := shardCount(maxKeys)
	s := &shardSet[K]{shards: make([]shard[K], n), mask: uint64(n - 1), maxKeys: maxKeys}
	for i := range s.shards {
		s.shards[i].epoch = epoch
		s.shards[i].core = newCore[K](shardCapacity(maxKeys, n, i), clock, refuse)
	}
	return s
}

// Table keeps one token bucket per key, at most MaxKeys of them. Create one
// with [New]; the zero value is not usable. A Table is safe for concurrent
// use.
type Table[K comparable] struct {
	hash     func(K) uint64
	refuse   bool
	epoch    time.Time // times are kept as nanoseconds since the epoch
	resizeMu sync.Mutex
	set      atomic.Pointer[shardSet[K]]
}

// New returns an empty Table. hash spreads the keys over the table's
// shards: it must be deterministic and well mixed in its low bits (a
// maphash under a per-process seed is). It only chooses a key's shard;
// buckets are found by the key itself (compared by ==), so keys whose
// hashes collide never share a bucket. It must not be nil.
func New[K comparable](opts Options, hash func(K) uint64) *Table[K] {
	if hash == nil {
		panic("buckets: New with a nil hash function")
	}
	t := &Table[K]{hash: hash, refuse: opts.RefuseWhenFull, epoch: time.Now()}
	t.set.Store(newShardSet[K](orDefault(opts.MaxKeys), t.epoch, math.MinInt64, t.refuse))
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

// clampBurst stores bursts in 32 bits: a burst above math.MaxInt32 is taken
// as math.MaxInt32.
func clampBurst(burst int) int32 {
	return int32(min(max(burst, math.MinInt32), math.MaxInt32))
}

// Reserve takes one token from k's bucket at now, creating the bucket (full,
// burst tokens) if k has none. limit and burst are the bucket's parameters,
// passed on every call: an existing bucket with other parameters is updated
// at now first (as rate.Limiter.SetLimitAt and SetBurstAt do), which is how
// a policy reload or a per-user tier reaches it. A raised burst does not
// fill the bucket at once; it refills at the rate. A burst above
// math.MaxInt32 is taken as math.MaxInt32.
//
// When the result is OK, the Reservation gives the token back if the
// caller's other checks fail. Otherwise nothing was spent and the
// Reservation is the zero value. When k has no bucket and k's shard is
// full, the table drops the shard's least recently used bucket (counted by
// Evictions unless it has refilled) or, in refuse mode, a bucket that has
// refilled if it finds one, and otherwise returns Result.Full. See
// "Bounded memory and the full table" in the package documentation.
func (t *Table[K]) Reserve(k K, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	n := since(now, t.epoch)
	s := t.lock(k)
	at, b, r := s.reserve(k, n, limit, clampBurst(burst))
	var res Reservation
	if b != nil {
		res = Reservation{g: &s.guard, b: b, at: at, gen: b.gen}
	}
	s.mu.Unlock()
	if r.RetryAfter > 0 && r.RetryAfter != rate.InfDuration && at > n {
		// Measured from the caller's now, which the shard took as at.
		if r.RetryAfter += time.Duration(at - n); r.RetryAfter < 0 {
			r.RetryAfter = rate.InfDuration
		}
	}
	return res, r
}

// Tokens returns the tokens in k's bucket at now, and false if k has no
// bucket (a key without a bucket would start with a full one). It does not
// count as a use of the bucket.
func (t *Table[K]) Tokens(k K, now time.Time) (float64, bool) {
	s := t.lock(k)
	defer s.mu.Unlock()
	if b, ok := s.lru.Peek(k); ok {
		return b.tokensAt(since(now, t.epoch)), true
	}
	return 0, false
}

// Len returns the number of buckets the table holds, never more than its
// MaxKeys.
func (t *Table[K]) Len() int {
	set := t.set.Load()
	n := 0
	for i := range set.shards {
		s := &set.shards[i]
		s.mu.Lock()
		n += s.len()
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

// Resize sets the table's MaxKeys (zero or less: DefaultMaxKeys). When the
// buckets no longer fit, Resize drops those that have refilled, then the
// least recently updated (among buckets updated at the same time, the
// fullest), and moves the others into new LRUs, whose reservations then
// give nothing back. Resize takes no time: a dropped bucket counts as an
// eviction unless it had refilled at the latest time its shard has seen
// (the latest any shard has seen, when the buckets move to new shards).
//
// When the new size calls for the same number of shards, Resize resizes
// them one by one, and a shard whose buckets fit keeps them where they
// are. When it calls for another number, Resize moves every bucket into a
// new set of shards, holding every shard lock meanwhile.
func (t *Table[K]) Resize(maxKeys int) {
	maxKeys = orDefault(maxKeys)
	t.resizeMu.Lock()
	defer t.resizeMu.Unlock()
	old := t.set.Load()
	if maxKeys == old.maxKeys {
		return
	}
	n := len(old.shards)
	if shardCount(maxKeys) != n {
		t.reshard(old, maxKeys)
		return
	}
	for i := range old.shards {
		s := &old.shards[i]
		s.mu.Lock()
		s.resize(shardCapacity(maxKeys, n, i))
		s.mu.Unlock()
	}
	old.maxKeys = maxKeys // guarded by resizeMu
}

// reshard moves every bucket of old into a new set of shards for maxKeys,
// holding every shard lock of old meanwhile, and retires old.
func (t *Table[K]) reshard(old *shardSet[K], maxKeys int) {
	for i := range old.shards {
		old.shards[i].mu.Lock()
	}
	clock := int64(math.MinInt64)
	carried := old.carried
	for i := range old.shards {
		clock = max(clock, old.shards[i].clock)
		carried += old.shards[i].evictions
	}
	// Every bucket goes to its new shard in oldestFirst order, so that a
	// shard that cannot keep them all keeps those that matter most.
	var all []moved[K]
	for i := range old.shards {
		all = old.shards[i].drain(all, clock)
	}
	slices.SortStableFunc(all, oldestFirst)
	next := newShardSet[K](maxKeys, t.epoch, clock, t.refuse)
	for _, m := range all {
		next.shards[t.hash(m.k)&next.mask].add(m)
	}
	for i := range next.shards {
		carried += next.shards[i].evictions
		next.shards[i].evictions = 0
	}
	next.carried = carried
	t.set.Store(next)
	for i := range old.shards {
		s := &old.shards[i]
		s.retired = true
		s.core = core[K]{} // frees the buckets; reservations point at copies no one reads
		s.mu.Unlock()
	}
}
