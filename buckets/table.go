package buckets

// This file holds the whole algorithm, in three layers:
//
//   - token arithmetic on one bucket (slot.tokensAt, slot.take, slot.set
//     and durationFromTokens), which follows golang.org/x/time/rate line
//     for line for the one-token reservations the table makes;
//   - lru, the unlocked core: the buckets of one shard, an index from a
//     key's hash to a slot, and an intrusive least-recently-used list
//     threaded through the slots;
//   - shard, shardSet and Table: a mutex around each lru, the shards of
//     one MaxKeys, and the exported API.

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

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
	// cacheLine is the unit shards are padded to, so that two cores
	// locking two shards do not share a line.
	cacheLine = 64
	// firstSlots is the number of slots a shard allocates on its first
	// bucket; the slots then double on demand up to the shard's capacity.
	firstSlots = 16
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
// It is a small value that names the bucket's slot, the generation of the
// bucket in it and the time the token was taken; its zero value is a
// reservation of nothing, whose Cancel does nothing.
type Reservation struct {
	s   *shard
	at  int64  // when the token was taken, in nanoseconds since the table's epoch
	i   int32  // the bucket's slot
	gen uint32 // the bucket's generation; the slot may hold another since
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
	if r.s == nil || since(now, r.s.epoch) > r.at {
		return
	}
	r.s.mu.Lock()
	r.s.cancel(r.i, r.gen, r.at)
	r.s.mu.Unlock()
}

// since returns t as nanoseconds since epoch. time.Time.Sub uses the
// monotonic clock readings when both times have one (time.Now's do), so a
// step of the wall clock neither refills nor freezes the buckets; it
// saturates at about ±292 years.
func since(t, epoch time.Time) int64 { return int64(t.Sub(epoch)) }

// slot is one bucket: 48 bytes. Buckets are identified by the hash of their
// key, not the key; see "Keys and hashes" in the package documentation.
type slot struct {
	hash   uint64     // the key's hash; the index maps it to this slot
	tokens float64    // the tokens at last
	last   int64      // the bucket's latest update, in ns since the epoch
	limit  rate.Limit // tokens per second
	burst  int32
	gen    uint32 // changes whenever the slot gets a bucket or new parameters
	prev   int32  // neighbours in the LRU list; slot 0 is its sentinel
	next   int32
}

// tokensAt returns the tokens in b at t, as rate.Limiter.advance computes
// them: t before the last update counts as the last update.
func (b *slot) tokensAt(t int64) float64 {
	tokens := b.tokens
	if b.limit > 0 && t > b.last {
		elapsed := time.Duration(t - b.last)
		if elapsed < 0 { // more than 292 years
			elapsed = math.MaxInt64
		}
		tokens += elapsed.Seconds() * float64(b.limit)
	}
	if burst := float64(b.burst); tokens > burst {
		tokens = burst
	}
	return tokens
}

// set gives b a new limit and burst at t, like rate.Limiter's SetLimitAt
// and SetBurstAt: the tokens are brought to t under the old parameters.
func (b *slot) set(t int64, limit rate.Limit, burst int32) {
	b.tokens = b.tokensAt(t)
	b.last = t
	b.limit = limit
	b.burst = burst
}

// take takes one token from b at t if it holds one, as ReserveN(t, 1)
// would, followed by CancelAt(t) when the reservation's delay is not zero:
// a refused take spends nothing and returns that delay.
func (b *slot) take(t int64) Result {
	if b.limit == rate.Inf {
		return Result{OK: true} // x/time/rate neither counts nor needs tokens
	}
	if b.burst < 1 {
		return Result{RetryAfter: rate.InfDuration} // never: n > burst
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
		return Result{OK: true}
	}
	b.tokens = tokens
	return Result{RetryAfter: wait}
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

// refilled reports whether b is full at t: such a bucket behaves exactly
// like a new one, so dropping it loses nothing.
func (b *slot) refilled(t int64) bool {
	return b.tokensAt(t) >= float64(b.burst)
}

// lru is the unlocked core of a Table: the buckets of one shard, at most
// capacity of them, least recently used first out. Every method requires
// the shard's lock.
//
// The buckets live in slots[1:], in no particular order; slots[0] is the
// sentinel of a circular doubly linked list through prev and next, most
// recently used first. A slot, once it holds a bucket, always holds one:
// a bucket is only dropped to make room for another, which takes its slot
// at once, so the table needs no free list. Shrinking the capacity builds
// a new lru instead.
type lru struct {
	index     map[uint64]int32 // key hash to slot
	slots     []slot           // grown on demand up to capacity+1
	capacity  int
	clock     int64  // the latest time seen; earlier times are taken as it
	evictions uint64 // buckets dropped before they had refilled
	gens      uint32 // the last generation handed out; 0 is never used
}

func newLRU(capacity int, clock int64, gens uint32) lru {
	return lru{
		index:    make(map[uint64]int32),
		slots:    make([]slot, 1, 1+min(capacity, firstSlots-1)),
		capacity: capacity,
		clock:    clock,
		gens:     gens,
	}
}

func (c *lru) len() int { return len(c.slots) - 1 }

func (c *lru) nextGen() uint32 {
	c.gens++
	if c.gens == 0 {
		c.gens = 1
	}
	return c.gens
}

// advance moves the clock to now and returns the time to act at: now, or
// the clock if now is earlier. x/time/rate counts the time between a
// bucket's last update and now twice if now goes back; a monotone clock per
// shard rules that out.
func (c *lru) advance(now int64) int64 {
	if now < c.clock {
		return c.clock
	}
	c.clock = now
	return now
}

// reserve is Table.Reserve for the keys of this shard. It returns the time
// it acted at, and the slot and generation of a token to give back (zero
// when there is none: refused, or a limit of rate.Inf).
func (c *lru) reserve(h uint64, now int64, limit rate.Limit, burst int32, refuse bool) (at int64, i int32, gen uint32, r Result) {
	at = c.advance(now)
	if i, ok := c.index[h]; ok {
		b := &c.slots[i]
		c.touch(i)
		// Policy reloads and per-user tiers reach existing buckets here.
		// Tokens taken under the old parameters cannot be given back.
		if b.limit != limit || b.burst != burst {
			b.set(at, limit, burst)
			b.gen = c.nextGen()
		}
		if r = b.take(at); !r.OK || limit == rate.Inf {
			return at, 0, 0, r
		}
		return at, i, b.gen, r
	}

	// A new bucket starts full, so the take succeeds unless the burst is
	// below one; then no bucket is made and nothing is evicted.
	if limit != rate.Inf && burst < 1 {
		return at, 0, 0, Result{RetryAfter: rate.InfDuration}
	}
	i = c.insert(h, at, refuse)
	if i == 0 {
		return at, 0, 0, Result{Full: true}
	}
	b := &c.slots[i]
	b.tokens, b.last, b.limit, b.burst, b.gen = float64(burst), at, limit, burst, c.nextGen()
	if r = b.take(at); limit == rate.Inf {
		return at, 0, 0, r
	}
	return at, i, b.gen, r
}

// insert links a slot for h at the front of the list and returns it; its
// bucket fields are the caller's to fill. When the shard is full, the least
// recently used bucket gives up its slot: silently if it has refilled at
// at, else counted as an eviction, or, when refuse is set, not at all:
// insert then returns 0.
func (c *lru) insert(h uint64, at int64, refuse bool) int32 {
	var i int32
	if c.len() < c.capacity {
		i = c.grow()
	} else {
		i = c.slots[0].prev // the least recently used
		oldest := &c.slots[i]
		if !oldest.refilled(at) {
			if refuse {
				return 0
			}
			c.evictions++
		}
		delete(c.index, oldest.hash)
		c.unlink(i)
	}
	c.slots[i].hash = h
	c.index[h] = i
	c.pushFront(i)
	return i
}

// grow appends a slot, doubling the slots' room when needed but never past
// capacity+1, so that a full shard holds no spare room.
func (c *lru) grow() int32 {
	n := len(c.slots)
	if n == cap(c.slots) {
		grown := make([]slot, n, min(2*n, c.capacity+1))
		copy(grown, c.slots)
		c.slots = grown
	}
	c.slots = c.slots[:n+1]
	return int32(n)
}

// touch moves slot i to the front of the list.
func (c *lru) touch(i int32) {
	if c.slots[0].next != i {
		c.unlink(i)
		c.pushFront(i)
	}
}

func (c *lru) unlink(i int32) {
	p, n := c.slots[i].prev, c.slots[i].next
	c.slots[p].next = n
	c.slots[n].prev = p
}

func (c *lru) pushFront(i int32) {
	first := c.slots[0].next
	c.slots[i].prev, c.slots[i].next = 0, first
	c.slots[first].prev = i
	c.slots[0].next = i
}

// cancel gives back a token taken from slot i at at, if the slot still
// holds that bucket with the parameters it had then (generation gen): the
// whole token, capped at the burst, which is exact when the bucket has not
// been updated at a later time since; else, updated at L, one token minus
// the refill from at to L (x/time/rate's rule), which leaves the bucket with
// no more than it would hold without the reservation. See "Giving a token
// back" in the package documentation.
func (c *lru) cancel(i int32, gen uint32, at int64) {
	if int(i) >= len(c.slots) || c.slots[i].gen != gen {
		return
	}
	b := &c.slots[i]
	restore := 1.0
	if b.last > at && b.limit > 0 {
		restore -= time.Duration(b.last-at).Seconds() * float64(b.limit)
		if restore <= 0 {
			return
		}
	}
	b.tokens = min(b.tokens+restore, float64(b.burst))
}

// peek returns the slot of h, or nil; it does not count as a use.
func (c *lru) peek(h uint64) *slot {
	if i, ok := c.index[h]; ok {
		return &c.slots[i]
	}
	return nil
}

// oldestFirst returns the buckets from least to most recently used.
func (c *lru) oldestFirst() []slot {
	out := make([]slot, 0, c.len())
	for i := c.slots[0].prev; i != 0; i = c.slots[i].prev {
		out = append(out, c.slots[i])
	}
	return out
}

// add inserts a bucket moved from another lru, making room as Reserve does
// in evict mode at the latest time the shard has seen. The bucket gets a
// new generation: reservations of it from before the move give nothing
// back.
func (c *lru) add(b slot) {
	i := c.insert(b.hash, c.clock, false)
	s := &c.slots[i]
	s.tokens, s.last, s.limit, s.burst, s.gen = b.tokens, b.last, b.limit, b.burst, c.nextGen()
}

// resized returns c with the given capacity. A larger capacity keeps the
// slots (and outstanding reservations); a smaller one moves the most
// recently used buckets that fit into new, smaller slots, counting the
// others as evictions unless they had refilled at the shard's clock.
func (c *lru) resized(capacity int) lru {
	if capacity >= c.len() && cap(c.slots) <= capacity+1 {
		c.capacity = capacity
		return *c
	}
	next := newLRU(capacity, c.clock, c.gens)
	next.evictions = c.evictions
	for _, b := range c.oldestFirst() {
		next.add(b)
	}
	return next
}

// shardState is one lock and its buckets.
type shardState struct {
	mu      sync.Mutex
	retired bool      // replaced by Resize: look the shard up again
	epoch   time.Time // the table's; read-only
	lru
}

// shard is a shardState padded to whole cache lines.
type shard struct {
	shardState
	_ [cacheLine - unsafe.Sizeof(shardState{})%cacheLine]byte
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

func newShardSet(maxKeys int, epoch time.Time, clock int64, carried uint64) *shardSet {
	n := shardCount(maxKeys)
	s := &shardSet{
		shards:  make([]shard, n),
		mask:    uint64(n - 1),
		maxKeys: maxKeys,
		carried: carried,
	}
	for i := range s.shards {
		s.shards[i].epoch = epoch
		s.shards[i].lru = newLRU(shardCapacity(maxKeys, n, i), clock, 0)
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
	set      atomic.Pointer[shardSet]
}

// New returns an empty Table. hash identifies each key's bucket and spreads
// the keys over the shards: it must be deterministic, well mixed in all its
// bits, and seeded per process (a maphash under a random seed is), because
// two keys with the same hash share one bucket (see the package
// documentation). It must not be nil.
func New[K comparable](opts Options, hash func(K) uint64) *Table[K] {
	if hash == nil {
		panic("buckets: New with a nil hash function")
	}
	t := &Table[K]{hash: hash, refuse: opts.RefuseWhenFull, epoch: time.Now()}
	t.set.Store(newShardSet(orDefault(opts.MaxKeys), t.epoch, math.MinInt64, 0))
	return t
}

func orDefault(maxKeys int) int {
	if maxKeys <= 0 {
		return DefaultMaxKeys
	}
	return maxKeys
}

// lock returns the shard of hash h, locked.
func (t *Table[K]) lock(h uint64) *shard {
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
// Reservation is the zero value. When k has no bucket and the table is
// full, the least recently used bucket is dropped if it has refilled;
// otherwise the table evicts it (counted by Evictions) or, in refuse mode,
// returns Result.Full.
func (t *Table[K]) Reserve(k K, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	return t.ReserveHash(t.hash(k), now, limit, burst)
}

// ReserveHash is Reserve for the key whose hash (by the Table's hash
// function) is h: for callers that already hold the hash. Buckets are kept
// by hash, so it acts exactly as Reserve on that key.
func (t *Table[K]) ReserveHash(h uint64, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	n := since(now, t.epoch)
	s := t.lock(h)
	at, i, gen, r := s.reserve(h, n, limit, clampBurst(burst), t.refuse)
	s.mu.Unlock()
	if r.RetryAfter > 0 && r.RetryAfter != rate.InfDuration && at > n {
		// Measured from the caller's now, which the shard took as at.
		if r.RetryAfter += time.Duration(at - n); r.RetryAfter < 0 {
			r.RetryAfter = rate.InfDuration
		}
	}
	if gen == 0 {
		return Reservation{}, r
	}
	return Reservation{s: s, at: at, i: i, gen: gen}, r
}

// Tokens returns the tokens in k's bucket at now, and false if k has no
// bucket (a key without a bucket would start with a full one). It does not
// count as a use of the bucket.
func (t *Table[K]) Tokens(k K, now time.Time) (float64, bool) {
	h := t.hash(k)
	s := t.lock(h)
	defer s.mu.Unlock()
	if b := s.peek(h); b != nil {
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

// Resize sets the table's MaxKeys (zero or less: DefaultMaxKeys), dropping
// the least recently used buckets that no longer fit. Resize takes no time:
// a dropped bucket counts as an eviction unless it had refilled at the
// latest time its shard has seen.
//
// When the new size calls for the same number of shards, Resize resizes
// them one by one; a shrunk shard moves its buckets into smaller slots, so
// that its memory shrinks too. When it calls for another number, Resize
// moves every bucket into a new set of shards, holding every shard lock
// meanwhile; the order of use is kept within each old shard and
// approximated across them. Outstanding reservations of moved buckets give
// nothing back.
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
			s.lru = s.resized(shardCapacity(maxKeys, n, i))
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
		b    slot
	}
	var all []moved
	clock := int64(math.MinInt64)
	carried := old.carried
	for i := range old.shards {
		s := &old.shards[i]
		clock = max(clock, s.clock)
		carried += s.evictions
		buckets := s.oldestFirst()
		for j, b := range buckets {
			all = append(all, moved{float64(j+1) / float64(len(buckets)), b})
		}
	}
	slices.SortStableFunc(all, func(a, b moved) int { return cmp.Compare(a.rank, b.rank) })
	next := newShardSet(maxKeys, t.epoch, clock, 0)
	for _, m := range all {
		next.shards[m.b.hash&next.mask].add(m.b)
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
		s.lru = lru{} // frees the slots; Cancel finds none
		s.mu.Unlock()
	}
}
