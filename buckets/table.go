package buckets

// This file holds the whole algorithm, in three layers:
//
//   - token arithmetic on one bucket (slot.tokensAt, slot.take, slot.set
//     and durationFromTokens), which follows golang.org/x/time/rate line
//     for line for the one-token reservations the table makes;
//   - core, the unlocked heart of a shard: its buckets, stored in an
//     open-addressed array indexed by the key's hash (linear probing,
//     backward-shift deletion), and a CLOCK hand that picks the bucket to
//     drop when the shard is full;
//   - shard, shardSet and Table: a mutex around each core, the shards of
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
	// more than one shard: each shard picks the buckets to drop among its
	// own, and a shard of a handful of buckets would drop almost at random.
	minShardKeys = 64
	// cacheLine is the unit shards are padded to, so that two cores
	// locking two shards do not share a line.
	cacheLine = 64
	// firstSlots is the number of slots a shard allocates when it is
	// made; the slots then double on demand up to sizeFor(capacity).
	firstSlots = 16
	// maxLoadPercent bounds the share of a shard's slots that hold a
	// bucket, which bounds the length of a probe.
	maxLoadPercent = 70
	// sweepLimit bounds the buckets the CLOCK hand looks at for one new
	// bucket in a full shard.
	sweepLimit = 16
	// refuseSweepLimit is sweepLimit in refuse mode, where the hand looks
	// for a refilled bucket only and a miss refuses the new key: each
	// bucket it looks at is likely a cache miss, and a flood of new keys
	// would pay for all of them.
	refuseSweepLimit = 4
)

// Options configures a Table. The zero value is a table of DefaultMaxKeys
// buckets that evicts a bucket not used lately when full (see "Bounded
// memory and the full table" in the package documentation).
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
// It is a small value that names the bucket's shard, hash and generation
// and the time the token was taken; its zero value is a reservation of
// nothing, whose Cancel does nothing.
type Reservation struct {
	s   *shard
	at  int64  // when the token was taken, in nanoseconds since the table's epoch
	h   uint64 // the bucket's hash
	gen uint32 // the bucket's generation; the hash may have another bucket since
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
	r.s.cancel(r.h, r.gen, r.at)
	r.s.mu.Unlock()
}

// since returns t as nanoseconds since epoch. time.Time.Sub uses the
// monotonic clock readings when both times have one (time.Now's do), so a
// step of the wall clock neither refills nor freezes the buckets; it
// saturates at about ±292 years.
func since(t, epoch time.Time) int64 { return int64(t.Sub(epoch)) }

// slot is one bucket, or none: 40 bytes. Buckets are identified by the hash
// of their key, not the key; see "Keys and hashes" in the package
// documentation.
type slot struct {
	hash uint64 // the key's hash
	// meta is the bucket's generation in its low 31 bits (zero: the slot
	// is empty), which changes whenever the hash gets a new bucket or new
	// parameters, and the CLOCK's referenced bit (referenced).
	meta   uint32
	burst  int32
	tokens float64    // the tokens at last
	last   int64      // the bucket's latest update, in ns since the epoch
	limit  rate.Limit // tokens per second
}

const (
	referenced = 1 << 31        // slot.meta: used since the hand last passed
	genMask    = referenced - 1 // slot.meta: the generation
)

func (b *slot) gen() uint32 { return b.meta & genMask }

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

// core is the unlocked heart of a shard: its buckets, at most capacity of
// them. Every method requires the shard's lock.
//
// The buckets live in slots, an open-addressed hash table: a bucket sits at
// the first slot from its home (home, from the hash's upper 32 bits) on,
// wrapping at the end, with no empty slot in between (linear probing). A
// slot with a zero generation is empty. At most maxLoadPercent of the slots
// hold a bucket, so probes stay short and always end at an empty slot. A
// lookup that hits reads one slot (sometimes the next few, all adjacent in
// memory), and a hit writes only the slot it read: no index, no list.
//
// The slots start small and double as buckets arrive, up to
// sizeFor(capacity); each doubling moves every bucket. When the shard is
// full, a new bucket takes the place of one chosen by a CLOCK hand (victim)
// and the dropped bucket is deleted by backward shift, which moves the
// buckets after it in its run back toward their homes, so that no
// tombstones accumulate. A bucket is named by its hash and generation, not
// its slot, so moves need no bookkeeping.
//
// The hand does not move to the next slot but by stride, which visits
// every slot once per turn in an order unrelated to the hash's: a hand
// that swept the slots in order would empty the runs behind it while those
// ahead of it grew (new buckets land anywhere), and the runs ahead would
// merge into ever longer ones.
type core struct {
	slots     []slot
	count     int    // buckets held
	capacity  int    // the most buckets the shard may hold
	hand      int    // the slot the CLOCK hand looks at next
	stride    int    // the hand's step: coprime with len(slots), about 0.618 of it
	clock     int64  // the latest time seen; earlier times are taken as it
	evictions uint64 // buckets dropped before they had refilled
	gens      uint32 // the last generation handed out; 0 is never used
}

// sizeFor returns the number of slots that holds capacity buckets at a
// load of at most maxLoadPercent, with at least one slot left empty.
func sizeFor(capacity int) int {
	return max(capacity+1, (capacity*100+maxLoadPercent-1)/maxLoadPercent)
}

func newCore(capacity int, clock int64, gens uint32) core {
	n := min(firstSlots, sizeFor(capacity))
	return core{
		slots:    make([]slot, n),
		stride:   strideFor(n),
		capacity: capacity,
		clock:    clock,
		gens:     gens,
	}
}

// strideFor returns the hand's step over n slots: the number nearest to n
// divided by the golden ratio that is coprime with n, so that the hand
// visits every slot once per turn and neighbouring slots far apart in time.
func strideFor(n int) int {
	s := max(1, int(float64(n)*0.6180339887498949))
	for gcd(s, n) != 1 {
		s++
	}
	return s
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (c *core) len() int { return c.count }

func (c *core) nextGen() uint32 {
	c.gens = (c.gens + 1) & genMask
	if c.gens == 0 {
		c.gens = 1
	}
	return c.gens
}

// home returns the first slot to look at for hash h among n slots. It uses
// the hash's upper 32 bits; the shard was chosen by its lowest bits.
func home(h uint64, n int) int {
	return int((h >> 32) * uint64(n) >> 32)
}

// find returns the slot holding h and true, or the empty slot where a
// bucket for h would go and false. The shard must have slots.
func (c *core) find(h uint64) (int, bool) {
	s := c.slots
	i := home(h, len(s))
	for {
		b := &s[i]
		if b.meta == 0 {
			return i, false
		}
		if b.hash == h {
			return i, true
		}
		if i++; i == len(s) {
			i = 0
		}
	}
}

// lookup returns the slot holding h, or nil.
func (c *core) lookup(h uint64) *slot {
	if len(c.slots) == 0 { // a retired shard
		return nil
	}
	if i, ok := c.find(h); ok {
		return &c.slots[i]
	}
	return nil
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

// reserve is Table.Reserve for the keys of this shard. It returns the time
// it acted at, and the generation of the bucket a token was taken from (zero
// when there is none to give back: refused, or a limit of rate.Inf).
func (c *core) reserve(h uint64, now int64, limit rate.Limit, burst int32, refuse bool) (at int64, gen uint32, r Result) {
	at = c.advance(now)
	i, ok := c.find(h)
	if ok {
		b := &c.slots[i]
		b.meta |= referenced
		// Policy reloads and per-user tiers reach existing buckets here.
		// Tokens taken under the old parameters cannot be given back.
		if b.limit != limit || b.burst != burst {
			b.set(at, limit, burst)
			b.meta = c.nextGen() | referenced
		}
		if r = b.take(at); !r.OK || limit == rate.Inf {
			return at, 0, r
		}
		return at, b.gen(), r
	}

	// A new bucket starts full, so the take succeeds unless the burst is
	// below one; then no bucket is made and nothing is evicted.
	if limit != rate.Inf && burst < 1 {
		return at, 0, Result{RetryAfter: rate.InfDuration}
	}
	if i = c.insert(h, i, at, refuse); i < 0 {
		return at, 0, Result{Full: true}
	}
	b := &c.slots[i]
	*b = slot{hash: h, meta: c.nextGen() | referenced, burst: burst, tokens: float64(burst), last: at, limit: limit}
	if r = b.take(at); limit == rate.Inf {
		return at, 0, r
	}
	return at, b.gen(), r
}

// insert returns the slot for a new bucket for h, which find returned as
// empty at i; the caller fills it in. When the shard is full, the bucket
// the CLOCK hand picks gives up its place: silently if it has refilled at
// at, else counted as an eviction, or, when refuse is set and the hand
// found no refilled bucket, not at all: insert then returns -1.
func (c *core) insert(h uint64, i int, at int64, refuse bool) int {
	switch {
	case c.count >= c.capacity:
		v, evict := c.victim(at, refuse)
		if v < 0 {
			return -1
		}
		if evict {
			c.evictions++
		}
		c.remove(v)
		i, _ = c.find(h) // the shift may have moved the empty slot
	case c.count+1 > c.room():
		c.rehash(min(2*len(c.slots), sizeFor(c.capacity)))
		i, _ = c.find(h)
	}
	c.count++
	return i
}

// room returns the number of buckets the slots may hold before they grow.
func (c *core) room() int {
	if len(c.slots) >= sizeFor(c.capacity) {
		return c.capacity
	}
	return len(c.slots) * maxLoadPercent / 100
}

// victim moves the CLOCK hand over at most sweepLimit buckets (in refuse
// mode refuseSweepLimit), and the empty slots between them, and returns the slot of the bucket to drop for
// a new one, and whether dropping it counts as an eviction. It takes the
// first bucket that has refilled at at (silently) or, unless refuse is set,
// the first whose referenced bit is clear (an eviction), clearing the
// referenced bits it passes. When every bucket it passed was referenced and
// none had refilled, it evicts the one of them updated longest ago, or in
// refuse mode returns -1. The shard must hold a bucket.
func (c *core) victim(at int64, refuse bool) (int, bool) {
	s := c.slots
	oldest := -1
	limit := sweepLimit
	if refuse {
		limit = refuseSweepLimit
	}
	for seen := 0; seen < limit; {
		i := c.hand
		if c.hand += c.stride; c.hand >= len(s) {
			c.hand -= len(s)
		}
		b := &s[i]
		if b.meta == 0 {
			continue
		}
		seen++
		if b.refilled(at) {
			return i, false
		}
		if refuse {
			continue
		}
		if b.meta&referenced == 0 {
			return i, true
		}
		b.meta &^= referenced
		if oldest < 0 || b.last < s[oldest].last {
			oldest = i
		}
	}
	return oldest, oldest >= 0
}

// remove empties slot i by backward shift: each later bucket of the run
// that may sit at i (its home is not cyclically in (i, j]) moves there, and
// its old slot is the next to fill, until the run ends.
func (c *core) remove(i int) {
	s := c.slots
	for j := i; ; {
		if j++; j == len(s) {
			j = 0
		}
		if s[j].meta == 0 {
			break
		}
		k := home(s[j].hash, len(s))
		if i <= j && i < k && k <= j || i > j && (i < k || k <= j) {
			continue // s[j] would come before its home
		}
		s[i] = s[j]
		i = j
	}
	s[i] = slot{}
	c.count--
}

// rehash moves the buckets into n slots.
func (c *core) rehash(n int) {
	old := c.slots
	c.slots = make([]slot, n)
	c.hand, c.stride = 0, strideFor(n)
	for i := range old {
		if old[i].meta != 0 {
			j, _ := c.find(old[i].hash)
			c.slots[j] = old[i]
		}
	}
}

// cancel gives back a token taken from h's bucket at at, if h still has
// that bucket with the parameters it had then (generation gen): the whole
// token, capped at the burst, which is exact when the bucket has not been
// updated at a later time since; else, updated at L, one token minus the
// refill from at to L (x/time/rate's rule), which leaves the bucket with no
// more than it would hold without the reservation. See "Giving a token
// back" in the package documentation.
func (c *core) cancel(h uint64, gen uint32, at int64) {
	b := c.lookup(h)
	if b == nil || b.gen() != gen {
		return
	}
	restore := 1.0
	if b.last > at && b.limit > 0 {
		restore -= time.Duration(b.last-at).Seconds() * float64(b.limit)
		if restore <= 0 {
			return
		}
	}
	b.tokens = min(b.tokens+restore, float64(b.burst))
}

// held is a bucket on its way to another core, with what decides whether
// it is kept.
type held struct {
	b        slot
	refilled bool // at the latest time the table had seen
}

// buckets appends the shard's buckets to out, noting which have refilled
// at t.
func (c *core) buckets(out []held, t int64) []held {
	for i := range c.slots {
		if b := &c.slots[i]; b.meta != 0 {
			out = append(out, held{*b, b.refilled(t)})
		}
	}
	return out
}

// keepFirst orders buckets by how much keeping them matters, for a Resize
// that cannot keep them all: buckets that have not refilled first (a
// refilled bucket carries no state), then the most recently updated, then
// the emptiest.
func keepFirst(a, b held) int {
	if a.refilled != b.refilled {
		if b.refilled {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(b.b.last, a.b.last); c != 0 {
		return c
	}
	return cmp.Compare(a.b.tokens, b.b.tokens)
}

// add puts a bucket moved from another core into c if it has room, with a
// new generation: reservations of it from before the move give nothing
// back. Otherwise the bucket is dropped, and counted as an eviction unless
// it had refilled.
func (c *core) add(m held) {
	if c.count >= c.capacity {
		if !m.refilled {
			c.evictions++
		}
		return
	}
	i, _ := c.find(m.b.hash)
	i = c.insert(m.b.hash, i, c.clock, false)
	b := m.b
	b.meta = c.nextGen() | b.meta&referenced
	c.slots[i] = b
}

// resized returns c with the given capacity. A capacity that holds the
// buckets and fits the slots keeps them (and outstanding reservations);
// otherwise the buckets move into new, smaller slots, in keepFirst order
// until the capacity is reached, and the others are dropped.
func (c *core) resized(capacity int) core {
	if capacity >= c.count && len(c.slots) <= sizeFor(capacity) {
		c.capacity = capacity
		return *c
	}
	next := newCore(capacity, c.clock, c.gens)
	next.evictions = c.evictions
	all := c.buckets(nil, c.clock)
	slices.SortStableFunc(all, keepFirst)
	for _, m := range all {
		next.add(m)
	}
	return next
}

// shardState is one lock and its buckets.
type shardState struct {
	mu      sync.Mutex
	retired bool      // replaced by Resize: look the shard up again
	epoch   time.Time // the table's; read-only
	core
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
		s.shards[i].core = newCore(shardCapacity(maxKeys, n, i), clock, 0)
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
// Reservation is the zero value. When k has no bucket and k's shard is
// full, a bucket that has refilled is dropped if the shard's CLOCK hand
// finds one; otherwise the table evicts a bucket not used since the hand
// last passed it (counted by Evictions) or, in refuse mode, returns
// Result.Full. See "Bounded memory and the full table" in the package
// documentation.
func (t *Table[K]) Reserve(k K, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	return t.ReserveHash(t.hash(k), now, limit, burst)
}

// ReserveHash is Reserve for the key whose hash (by the Table's hash
// function) is h: for callers that already hold the hash. Buckets are kept
// by hash, so it acts exactly as Reserve on that key.
func (t *Table[K]) ReserveHash(h uint64, now time.Time, limit rate.Limit, burst int) (Reservation, Result) {
	n := since(now, t.epoch)
	s := t.lock(h)
	at, gen, r := s.reserve(h, n, limit, clampBurst(burst), t.refuse)
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
	return Reservation{s: s, at: at, h: h, gen: gen}, r
}

// Tokens returns the tokens in k's bucket at now, and false if k has no
// bucket (a key without a bucket would start with a full one). It does not
// count as a use of the bucket.
func (t *Table[K]) Tokens(k K, now time.Time) (float64, bool) {
	h := t.hash(k)
	s := t.lock(h)
	defer s.mu.Unlock()
	if b := s.lookup(h); b != nil {
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
// the buckets that no longer fit: first those that have refilled, then
// those updated longest ago (among buckets updated at the same time, the
// fullest). Resize takes no time: a dropped bucket counts as an eviction
// unless it had refilled at the latest time its shard has seen (the latest
// any shard has seen, when the buckets move to new shards).
//
// When the new size calls for the same number of shards, Resize resizes
// them one by one; a shrunk shard moves its buckets into smaller slots, so
// that its memory shrinks too. When it calls for another number, Resize
// moves every bucket into a new set of shards, holding every shard lock
// meanwhile. Outstanding reservations of moved buckets give nothing back.
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
			s.core = s.resized(shardCapacity(maxKeys, n, i))
			s.mu.Unlock()
		}
		old.maxKeys = maxKeys // guarded by resizeMu
		return
	}

	for i := range old.shards {
		old.shards[i].mu.Lock()
	}
	// Every bucket goes to its new shard in keepFirst order, so that a
	// shard that cannot keep them all keeps those that matter most.
	var all []held
	clock := int64(math.MinInt64)
	carried := old.carried
	for i := range old.shards {
		clock = max(clock, old.shards[i].clock)
		carried += old.shards[i].evictions
	}
	for i := range old.shards {
		all = old.shards[i].buckets(all, clock)
	}
	slices.SortStableFunc(all, keepFirst)
	next := newShardSet(maxKeys, t.epoch, clock, 0)
	for _, m := range all {
		next.shards[m.b.hash&next.mask].add(m)
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
		s.core = core{} // frees the slots; Cancel finds none
		s.mu.Unlock()
	}
}
