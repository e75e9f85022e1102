// Package buckets keeps a token bucket per key in a table of bounded size.
//
// # Overview
//
// A [Table] maps keys to token buckets, at most Options.MaxKeys of them,
// dropping buckets not used lately when it is full. [Table.Reserve] takes one token from a
// key's bucket at a given time and returns a [Reservation] that gives the
// token back if the caller decides not to admit after all:
//
//	t := buckets.New(buckets.Options{MaxKeys: 100_000}, func(k keys.Key) uint64 { return k.Hash(seed) })
//	res, r := t.Reserve(k, now, 10, 20) // 10 tokens per second, burst 20
//	if !r.OK {
//		// 429, Retry-After from r.RetryAfter (or r.Full: table full)
//	}
//	if otherRuleRefused {
//		res.Cancel(now) // spend nothing for a rejected handshake
//	}
//
// The rate and burst are passed on every call, not stored at creation: an
// existing bucket whose parameters differ is updated in place, so a policy
// reload or a per-user tier applies to keys that already have a bucket.
//
// The whole algorithm is in table.go: the token arithmetic, the unlocked
// hash table of one shard with its CLOCK eviction, and the sharded, locked
// Table around it.
//
// # Arithmetic
//
// A bucket is two numbers, its tokens and the time they were counted, and
// follows golang.org/x/time/rate for everything the table does with it
// (the differential test in differential_test.go runs random sequences
// against a rate.Limiter: results and token counts agree to the bit in most
// steps and within a few units in the last place in the others):
//
//   - tokens refill at the limit per second, up to the burst; a new bucket
//     starts with the burst;
//   - a reservation of one token succeeds when the bucket holds one at now
//     (ReserveN(now, 1) with a zero delay); a limit of rate.Inf always
//     succeeds and counts nothing;
//   - a refused reservation spends nothing, and Result.RetryAfter is the
//     delay x/time/rate's reservation would have had: (1 - tokens) / limit,
//     rate.InfDuration for a limit of zero or a burst below one;
//   - a new limit or burst is applied as SetLimitAt and SetBurstAt do: the
//     tokens are counted up to now under the old parameters, then the new
//     ones apply (a raised burst fills at the rate, not at once).
//
// # Giving a token back
//
// [Reservation.Cancel] at the reservation's time gives the token back,
// capped at the burst. When nothing happened to the bucket at a later time
// (other reservations at the same instant are fine: the usual case, where
// a handshake is refused by another rule right away), this is exact: the
// bucket is as if the reservation had not been made, whatever else was
// granted or refused meanwhile. (x/time/rate's CancelAt restores less after
// a refused reservation, taken and cancelled: it keeps that reservation's
// would-be time as its last event and deducts the refill up to it.)
//
// When the bucket has been used at a later time L since (its shard's clock
// moved on), a whole token could give more than if the reservation had not
// been made: the bucket may have reached its burst in between, where the
// token would have been lost anyway. (Burst 2, one token per second: a
// reservation at 0.5s takes 1.5 to 0.5; one at 1.3s takes 1.3 to 0.3.
// Without the first, the bucket holds 2 at 1s and 1 after the second; a
// whole token back would make 1.3.) So Cancel then gives back one token
// minus the refill between the reservation and L, x/time/rate's rule,
// possibly nothing: the bucket then never holds more tokens than it would
// have without the reservation, all other decisions standing (the
// differential test checks this against a replay without it). CancelAt at
// the reservation's time, as this package used to call it, also moves the
// limiter's clock back to that time and counts the refill since twice,
// which can give more.
//
// When the bucket has since been dropped, moved by Resize, or given a new
// limit or burst, Cancel gives nothing back. Every case errs toward
// admitting fewer, never more. A Reservation names its bucket by shard,
// hash and generation (which changes whenever the hash gets a new bucket
// or new parameters), so Cancel never adds a token to another bucket; the
// moves a shard makes within its own slots (see below) do not matter.
//
// # Time
//
// Time is a parameter: the Table never reads the clock (except once, in
// New, for an epoch). Times are kept as nanoseconds since that epoch,
// computed by time.Time.Sub, which uses the monotonic clock readings that
// time.Now gives: a step of the wall clock neither refills nor freezes the
// buckets. Times must lie within about 292 years of the epoch.
//
// Each shard keeps the latest time it was given and takes an earlier time
// as that one, because a bucket would otherwise count the refill between
// the two times twice when two callers' clocks are read in one order and
// their calls run in the other. Result.RetryAfter is measured from the
// caller's now all the same.
//
// # Keys and hashes
//
// The table identifies a bucket by the 64-bit hash of its key, not by the
// key: it stores 8 bytes per key whatever the key's size, and never
// compares keys. Two keys whose hashes collide share one bucket. With a
// hash seeded at random per process (hash/maphash), an attacker cannot aim
// at a collision, and the chance of any among n keys is about n²/2⁶⁵:
// 3×10⁻¹⁰ for 100,000 keys, 3×10⁻⁸ for a million. A new key lands in the
// bucket of one held by a table of MaxKeys with chance MaxKeys/2⁶⁴ (5×10⁻¹⁵
// at 100,000). Keys that share a bucket share its tokens, so they get fewer
// handshakes together, not more (if their limits differ, as with per-user
// tiers, the bucket refills at whichever limit the last call passed).
//
// # Bounded memory and the full table
//
// A bucket that has refilled holds as many tokens as a new one: it carries
// no state and may be dropped. Buckets that have not refilled do carry state
// (a client that just spent its burst), and a table that drops them lets
// that client start afresh.
//
// The table is split into shards (see Concurrency), each with a fixed share
// of MaxKeys; the shares add up to exactly MaxKeys, so Len never exceeds
// it. When a key without a bucket arrives at a full shard, the shard picks
// a bucket to drop with the CLOCK algorithm, an approximation of least
// recently used: each bucket has a referenced bit, set when it is created
// and whenever it is reserved, and a hand moves over the shard's slots,
// visiting each once per turn in a fixed order unrelated to the keys' use
// or hashes, clearing the bits it passes. The hand stops at the first
// bucket that has refilled, which is dropped silently, or whose bit was
// already clear: one not reserved since the hand last passed it. The hand
// looks at no more than 16 buckets for one new key; if all 16 were
// referenced, the one of them updated longest ago is taken. A bucket
// reserved at least once per turn of the hand is taken only that way, when
// it was the least recently updated of 16 referenced buckets in a row; a
// turn takes at least as many new keys as the shard has buckets divided by
// 16, and usually several times that, as the hand finds unreferenced
// buckets sooner. When the bucket taken has not refilled, the table does
// what Options.RefuseWhenFull says:
//
//   - false (the default): evict it anyway and count it in
//     [Table.Evictions]. Every key keeps being served; under a flood of
//     distinct keys the buckets not used lately are lost, which lets their
//     keys burst again.
//   - true: drop only refilled buckets (the hand skips the others, and
//     looks at 4 buckets, from where it stopped last), and refuse the new
//     key with Result.Full when it finds none. Over successive refusals
//     the hand looks at every bucket of the shard in turn. Keys that have
//     a bucket are always served; new keys are refused until a bucket
//     refills or the table is resized (HAProxy's nopurge).
//
// Both are deliberate choices, unlike nginx's limit_req/limit_conn, which
// fail every request that needs a new entry once the zone is full.
//
// A shard stores its buckets in a hash table with open addressing: 40-byte
// slots (hash, tokens, time, limit, burst, and a word holding the
// generation and the referenced bit), with linear probing from a slot
// chosen by the hash, at most 70% of them in use. Finding a bucket reads
// one slot, sometimes the next few, which are adjacent in memory; reserving
// it writes only that slot, so a Reserve on a table too large for the CPU's
// caches costs about one cache miss. A new key in a full shard costs one
// more for each bucket the hand looks at (usually one or two; at most 16,
// or 4 in refuse mode). A bucket dropped from the middle of a run of slots
// is filled by moving the buckets after it back (backward shift deletion),
// so no tombstones accumulate. The slots double as buckets arrive, up to
// MaxKeys/0.7 in all and never past it, and a full table allocates
// nothing: a full table holds about 57 bytes per bucket, about 5.7 MB for
// MaxKeys 100,000, under long churn of distinct keys as well
// (BenchmarkMemoryPerKey, TestMemoryBound; the baseline map of
// rate.Limiters measured beside it takes about 230 bytes per key, without
// a bound).
//
// A shard can be full while others have room, so eviction (or refusal)
// starts a little before Len reaches MaxKeys: the price of an exact bound
// without a global lock. With keys spread by a good hash, a table of
// 100,000 filled with 100,000 keys holds about 99% of them; of 1,000,000,
// about 99.6%. Small tables use fewer shards (at least 64 buckets per
// shard), so that each shard has enough buckets to choose from.
//
// [Table.Resize] keeps the shards when the new size allows the same number,
// and otherwise moves the buckets into a new set of shards. A shard that
// must drop buckets (or whose slots are too large for its new size) moves
// the buckets it keeps into new slots; it keeps first those that have not
// refilled, and of those the most recently updated.
//
// # Concurrency
//
// A Table is safe for concurrent use by multiple goroutines. Keys are spread
// over up to 64 shards by their hash; each shard is a mutex around an
// unlocked hash table of buckets, padded to whole cache lines so that
// neighbouring shards do not share one. Reserve and Tokens lock one shard;
// Len and Evictions visit the shards one after another, so under
// concurrent use their result is not a snapshot of one instant. Resize
// locks the shards one by one, or all of them while it moves buckets to a
// new set of shards. A Reservation may be cancelled from any goroutine; Cancel locks
// only its bucket's shard.
package buckets
