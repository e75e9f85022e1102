package buckets

// This file holds the whole algorithm, in three layers:
//
//   - token arithmetic on one bucket (bucket.tokensAt, take, withParams,
//     cancel, refilled and durationFromTokens): pure functions of a
//     bucket, its parameters and a time, which follow golang.org/x/time/rate
//     for the one-token reservations the table makes;
//   - core, the unlocked heart of a shard: a simplelru.LRU from a key's
//     digest to its bucket, the shard's parameter sets, and what to drop
//     when it is full;
//   - shard, shardSet and Table: a mutex around each core, the shards of
//     one MaxKeys, and the exported API.

import (
	"cmp"
	"hash/maphash"
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
	// shardShift puts a digest's top bits in the low bits: they choose its
	// shard.
	shardShift = 58
	// minShardKeys is the fewest buckets a shard is given when a Table has
	// more than one shard: each shard is an LRU of its own, and an LRU of a
	// handful of buckets would drop almost at random.
	minShardKeys = 64
	// refuseLook bounds the buckets a full shard in refuse mode looks at
	// for one that has refilled, for one new key: a flood of new keys pays
	// for each of them.
	refuseLook = 4
	// maxSets bounds the parameter sets (limit and burst) of the buckets of
	// one shard; a bucket's LRU key names its set in its low bits, setMask.
	maxSets = 64
	setMask = maxSets - 1
	// recentSize is the number of removals from its LRU a shard remembers,
	// for Reservation.Cancel.
	recentSize = 32
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
// It is a small value that names the bucket in its shard, with the time
// the token was taken; its zero value is a reservation of nothing, whose
// Cancel does nothing.
type Reservation struct {
	s   *shard
	key uint64 // the bucket's key in the shard's LRU
	at  int64  // when the token was taken, in nanoseconds since the table's epoch
	seq uint64 // the shard's removals then
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
// "Giving a token back" in the package documentation). Like Reserve,
// Cancel makes the bucket its shard's most recently used. Cancel a
// reservation at most once: a second Cancel of the same reservation (or of
// a copy) gives the token back again.
func (r Reservation) Cancel(now time.Time) {
	if r.s == nil || since(now, r.s.epoch) > r.at {
		return
	}
	r.s.mu.Lock()
	if !r.s.retired {
		r.s.cancel(r.key, r.at, r.seq)
	}
	r.s.mu.Unlock()
}

// since returns t as nanoseconds since epoch. time.Time.Sub uses the
// monotonic clock readings when both times have one (time.Now's do), so a
// step of the wall clock neither refills nor freezes the buckets; it
// saturates at about ±292 years.
func since(t, epoch time.Time) int64 { return int64(t.Sub(epoch)) }

// params are a bucket's limit and burst.
type params struct {
	limit rate.Limit // tokens per second
	burst int32
}

// same reports whether p and q are the same parameters, comparing the
// limits bit for bit (so that a NaN limit is one parameter set, not a new
// one each time).
func (p params) same(q params) bool {
	return math.Float64bits(float64(p.limit)) == math.Float64bits(float64(q.limit)) && p.burst == q.burst
}

// bucket is one key's token bucket: 16 bytes, held by value in its shard's
// LRU. Its limit and burst are those of the shard's parameter set that its
// LRU key names.
type bucket struct {
	tokens float64 // the tokens at last
	last   int64   // the bucket's latest update, in ns since the epoch
}

// tokensAt returns the tokens in b at t under p, as rate.Limiter.advance
// computes them: t before the last update counts as the last update.
func (b bucket) tokensAt(p params, t int64) float64 {
	tokens := b.tokens
	if p.limit > 0 && t > b.last {
		elapsed := time.Duration(t - b.last)
		if elapsed < 0 { // more than 292 years
			elapsed = math.MaxInt64
		}
		tokens += elapsed.Seconds() * float64(p.limit)
	}
	return min(tokens, float64(p.burst))
}

// withParams returns b, which had parameters old, at t when it takes new
// ones, as rate.Limiter's SetLimitAt and SetBurstAt make it: the tokens
// are brought to t under the old parameters.
func (b bucket) withParams(t int64, old params) bucket {
	return bucket{tokens: b.tokensAt(old, t), last: t}
}

// take takes one token from b at t under p if it holds one, as
// ReserveN(t, 1) would, followed by CancelAt(t) when the reservation's
// delay is not zero: a refused take spends nothing and returns that delay.
func (b bucket) take(p params, t int64) (bucket, Result) {
	if p.limit == rate.Inf {
		return b, Result{OK: true} // x/time/rate neither counts nor needs tokens
	}
	if p.burst < 1 {
		return b, Result{RetryAfter: rate.InfDuration} // never: n > burst
	}
	tokens := b.tokensAt(p, t)
	b.last = t
	left := tokens - 1
	var wait time.Duration
	if left < 0 {
		wait = durationFromTokens(-left, p.limit)
	}
	if wait == 0 { // x/time/rate grants a deficit worth less than 1 ns too
		b.tokens = left
		return b, Result{OK: true}
	}
	b.tokens = tokens
	return b, Result{RetryAfter: wait}
}

// cancel returns b with a token taken at at given back under p: the whole
// token, capped at the burst, which is exact when b has not been updated
// at a later time since; else, updated at L, one token minus the refill
// from at to L (x/time/rate's rule), which leaves b with no more than it
// would hold without the reservation. See "Giving a token back" in the
// package documentation.
func (b bucket) cancel(p params, at int64) bucket {
	restore := 1.0
	if b.last > at && p.limit > 0 {
		restore -= time.Duration(b.last-at).Seconds() * float64(p.limit)
		if restore <= 0 {
			return b
		}
	}
	b.tokens = min(b.tokens+restore, float64(p.burst))
	return b
}

// refilled reports whether b is full at t under p: such a bucket behaves
// exactly like a new one, so dropping it loses nothing.
func (b bucket) refilled(p params, t int64) bool {
	return b.tokensAt(p, t) >= float64(p.burst)
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
// them, in an LRU, least recently used first out. Every method requires the
// shard's lock.
//
// A key is known by its id, its 64-bit digest with the low bits cleared
// (see "Keys" in the package documentation); its bucket's key in the LRU
// is the id with, in those bits, the index of the bucket's parameter set
// in sets. A bucket whose key passes other parameters moves to the key of
// their set. The LRU holds the buckets by value, so that a bucket costs
// one list entry and one map slot and nothing else: an update puts the
// bucket back with Add. The core makes room itself before each new
// bucket, so the LRU never evicts on its own.
type core struct {
	lru       *simplelru.LRU[uint64, bucket]
	sets      []params // the parameter sets, at most maxSets
	uses      []int    // the buckets of each set; a set of none is free
	capacity  int      // the most buckets the shard may hold
	refuse    bool     // Options.RefuseWhenFull
	clock     int64    // the latest time seen; earlier times are taken as it
	evictions uint64   // buckets dropped before they had refilled
	// removed counts the buckets removed from lru; recent holds the keys of
	// the latest recentSize of them, removal n at n%recentSize. They tell
	// Cancel whether its bucket stayed.
	removed uint64
	recent  [recentSize]uint64
}

func newCore(capacity int, clock int64, refuse bool) core {
	lru, err := simplelru.NewLRU[uint64, bucket](capacity, nil)
	if err != nil {
		panic("buckets: " + err.Error()) // capacity >= 1 by construction
	}
	return core{lru: lru, capacity: capacity, refuse: refuse, clock: clock}
}

// advance moves the clock to now and returns the time to act at: now, or
// the clock if now is earlier. x/time/rate counts the time between a
// bucket's last update and now twice if now goes back; a monotone clock per
// shard rules that out.
func (c *core) advance(now int64) int64 {
	if now < c.clock {
		return c.clock
	}
	c.clock = now
	return now
}

// reserve is Table.Reserve for the key whose id is id. It returns the time
// it acted at, the bucket's key in the LRU, and whether a token was taken
// that Cancel can give back (not when refused, nor for a limit of
// rate.Inf).
func (c *core) reserve(id uint64, now int64, p params) (at int64, key uint64, held bool, r Result) {
	at = c.advance(now)
	set := c.find(p)
	var b bucket
	ok := false
	if set >= 0 {
		b, ok = c.lru.Peek(id | uint64(set))
	}
	if !ok {
		if old, ob, found := c.lookup(id, set); found {
			// Policy reloads and per-user tiers reach existing buckets here.
			b = ob.withParams(at, c.sets[old])
			c.remove(id | uint64(old))
		} else {
			// A new bucket starts full, so the take succeeds unless the
			// burst is below one; then no bucket is made and none is
			// dropped.
			if p.limit != rate.Inf && p.burst < 1 {
				return at, 0, false, Result{RetryAfter: rate.InfDuration}
			}
			if !c.makeRoom() {
				return at, 0, false, Result{Full: true}
			}
			b = bucket{tokens: float64(p.burst), last: at}
		}
		if set < 0 {
			set = c.intern(p)
		}
		c.uses[set]++
	}
	key = id | uint64(set)
	b, r = b.take(p, at)
	c.lru.Add(key, b)
	return at, key, r.OK && p.limit != rate.Inf, r
}

// find returns the index of the set of parameters p, or -1.
func (c *core) find(p params) int {
	return slices.IndexFunc(c.sets, p.same)
}

// lookup finds the bucket of the key whose id is id under any set but
// skip, and returns its set.
func (c *core) lookup(id uint64, skip int) (set int, b bucket, ok bool) {
	for i, n := range c.uses {
		if n > 0 && i != skip {
			if b, ok := c.lru.Peek(id | uint64(i)); ok {
				return i, b, true
			}
		}
	}
	return -1, bucket{}, false
}

// intern returns a set for the parameters p, which have none: a free one,
// a new one, or, when maxSets are in use, the one with the fewest buckets,
// which it drops.
func (c *core) intern(p params) int {
	i := slices.Index(c.uses, 0)
	if i < 0 && len(c.sets) < maxSets {
		c.sets = append(c.sets, p)
		c.uses = append(c.uses, 0)
		return len(c.sets) - 1
	}
	if i < 0 {
		i = slices.Index(c.uses, slices.Min(c.uses))
		c.retire(i)
	}
	c.sets[i] = p
	return i
}

// retire drops every bucket of set i, counting as evictions those that
// have not refilled.
func (c *core) retire(i int) {
	for _, k := range c.lru.Keys() {
		if k&setMask == uint64(i) {
			if b, _ := c.lru.Peek(k); !b.refilled(c.sets[i], c.clock) {
				c.evictions++
			}
			c.remove(k)
		}
	}
}

// paramsOf returns the parameters of the bucket whose LRU key is key.
func (c *core) paramsOf(key uint64) params { return c.sets[key&setMask] }

// remove removes the bucket whose LRU key is key, if any.
func (c *core) remove(key uint64) {
	if c.lru.Remove(key) {
		c.removedKey(key)
	}
}

// removedKey accounts for the removal of key from the LRU.
func (c *core) removedKey(key uint64) {
	c.uses[key&setMask]--
	c.remember(key)
}

// remember records a removal of key for cancel.
func (c *core) remember(key uint64) {
	c.recent[c.removed%recentSize] = key
	c.removed++
}

// stayed reports whether the bucket under key has stayed in the LRU since
// the shard had removed seq buckets: none of the removals since was of key,
// and the shard remembers them all.
func (c *core) stayed(key, seq uint64) bool {
	if c.removed-seq > recentSize {
		return false
	}
	for n := seq; n < c.removed; n++ {
		if c.recent[n%recentSize] == key {
			return false
		}
	}
	return true
}

// cancel is Reservation.Cancel: it gives back the token taken at at from
// the bucket under key, if the bucket has stayed since the shard had
// removed seq buckets. A bucket that moved to another parameter set has
// been removed from its key.
func (c *core) cancel(key uint64, at int64, seq uint64) {
	if !c.stayed(key, seq) {
		return
	}
	if b, ok := c.lru.Peek(key); ok {
		c.lru.Add(key, b.cancel(c.paramsOf(key), at))
	}
}

// makeRoom makes room for a new bucket if the shard is full, and reports
// whether there is room. In evict mode the least recently used bucket goes
// (an eviction unless it has refilled). In refuse mode only a bucket that
// has refilled goes: makeRoom looks at up to refuseLook buckets from the
// least recently used end, moving each that has not refilled to the other
// end so that the next new key looks at others, and reports false if none
// of them had.
func (c *core) makeRoom() bool {
	if c.lru.Len() < c.capacity {
		return true
	}
	if !c.refuse {
		c.dropOldest()
		return true
	}
	for range refuseLook {
		k, b, _ := c.lru.GetOldest()
		if b.refilled(c.paramsOf(k), c.clock) {
			c.lru.RemoveOldest()
			c.removedKey(k)
			return true
		}
		c.lru.Get(k)
	}
	return false
}

// len returns the number of buckets in c: none once Resize has retired
// its shard.
func (c *core) len() int {
	if c.lru == nil {
		return 0
	}
	return c.lru.Len()
}

// dropOldest drops the least recently used bucket, counting it as an
// eviction unless it has refilled at the latest time the shard has seen.
func (c *core) dropOldest() {
	if k, b, ok := c.lru.RemoveOldest(); ok {
		if !b.refilled(c.paramsOf(k), c.clock) {
			c.evictions++
		}
		c.removedKey(k)
	}
}

// moved is a bucket on its way to another core, with its key's id and its
// parameters.
type moved struct {
	id uint64
	b  bucket
	p  params
}

// drain appends to out the buckets of c that have not refilled at t; the
// others carry no state and are left behind.
func (c *core) drain(out []moved, t int64) []moved {
	keys, buckets := c.lru.Keys(), c.lru.Values()
	for i, b := range buckets {
		if p := c.paramsOf(keys[i]); !b.refilled(p, t) {
			out = append(out, moved{keys[i] &^ setMask, b, p})
		}
	}
	return out
}

// oldestFirst orders moved buckets for add: least recently updated first
// and, of those updated at the same time, the fullest, so that a core that
// cannot take them all drops those that carry the least state.
func oldestFirst(a, b moved) int {
	if c := cmp.Compare(a.b.last, b.b.last); c != 0 {
		return c
	}
	return cmp.Compare(b.b.tokens, a.b.tokens)
}

// add puts a moved bucket into c as its most recently used, dropping the
// least recently used if c is full.
func (c *core) add(m moved) {
	if c.lru.Len() >= c.capacity {
		c.dropOldest()
	}
	set := c.find(m.p)
	if set < 0 {
		set = c.intern(m.p)
	}
	c.uses[set]++
	c.lru.Add(m.id|uint64(set), m.b)
}

// resize sets c's capacity. When the buckets no longer fit, those that
// have refilled are dropped, and the others move into a new LRU in
// oldestFirst order, dropping the oldest that do not fit (so that the
// memory of the old map is given back too). Moving counts as a removal of
// every bucket: reservations from before give nothing back.
func (c *core) resize(capacity int) {
	if c.lru.Len() <= capacity {
		c.lru.Resize(capacity)
		c.capacity = capacity
		return
	}
	all := c.drain(nil, c.clock)
	slices.SortStableFunc(all, oldestFirst)
	next := newCore(capacity, c.clock, c.refuse)
	next.evictions, next.removed, next.recent = c.evictions, c.removed, c.recent
	for _, k := range c.lru.Keys() {
		next.remember(k)
	}
	for _, m := range all {
		next.add(m)
	}
	*c = next
}

// shard is one lock and its buckets.
type shard struct {
	mu      sync.Mutex
	epoch   time.Time // the table's; read-only
	retired bool      // replaced by Resize: look the shard up again
	core
}

// shardSet is the shards of a Table for one MaxKeys.
type shardSet struct {
	shards  []shard
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

func newShardSet(maxKeys int, epoch time.Time, clock int64, refuse bool) *shardSet {
	n := shardCount(maxKeys)
	s := &shardSet{shards: make([]shard, n), mask: uint64(n - 1), maxKeys: maxKeys}
	for i := range s.shards {
		s.shards[i].epoch = epoch
		s.shards[i].core = newCore(shardCapacity(maxKeys, n, i), clock, refuse)
	}
	return s
}

// of returns the shard of the key whose digest (or id) is d.
func (s *shardSet) of(d uint64) *shard { return &s.shards[d>>shardShift&s.mask] }

// Table keeps one token bucket per key, at most MaxKeys of them. Create one
// with [New]; the zero value is not usable. A Table is safe for concurrent
// use.
type Table[K comparable] struct {
	seed     maphash.Seed // the table's own: its digests are known to no one else
	refuse   bool
	epoch    time.Time // times are kept as nanoseconds since the epoch
	resizeMu sync.Mutex
	set      atomic.Pointer[shardSet]
}

// New returns an empty Table. The table knows a key by a 64-bit digest of
// it (maphash.Comparable under a random seed of its own), and keeps no
// key: keys whose digests agree in 58 bits share a bucket, which with
// such digests takes about 2^58 keys to bring about on purpose (see
// "Keys" in the package documentation).
func New[K comparable](opts Options) *Table[K] {
	t := &Table[K]{seed: maphash.MakeSeed(), refuse: opts.RefuseWhenFull, epoch: time.Now()}
	t.set.Store(newShardSet(orDefault(opts.MaxKeys), t.epoch, math.MinInt64, t.refuse))
	return t
}

func orDefault(maxKeys int) int {
	if maxKeys <= 0 {
		return DefaultMaxKeys
	}
	return maxKeys
}

// lock returns the id of k and its shard, locked.
func (t *Table[K]) lock(k K) (uint64, *shard) {
	id := maphash.Comparable(t.seed, k) &^ setMask
	for {
		s := t.set.Load().of(id)
		s.mu.Lock()
		if !s.retired {
			return id, s
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
	id, s := t.lock(k)
	at, key, held, r := s.reserve(id, n, params{limit, clampBurst(burst)})
	var res Reservation
	if held {
		res = Reservation{s: s, key: key, at: at, seq: s.removed}
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
	id, s := t.lock(k)
	defer s.mu.Unlock()
	if set, b, ok := s.lookup(id, -1); ok {
		return b.tokensAt(s.sets[set], since(now, t.epoch)), true
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
func (t *Table[K]) reshard(old *shardSet, maxKeys int) {
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
	var all []moved
	for i := range old.shards {
		all = old.shards[i].drain(all, clock)
	}
	slices.SortStableFunc(all, oldestFirst)
	next := newShardSet(maxKeys, t.epoch, clock, t.refuse)
	for _, m := range all {
		next.of(m.id).add(m)
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
		s.core = core{} // frees the buckets; Cancel does nothing in a retired shard
		s.mu.Unlock()
	}
}
