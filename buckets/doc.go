// Package buckets keeps a token bucket per key in a table of bounded size.
//
// # Overview
//
// A [Table] maps keys to token buckets, at most Options.MaxKeys of them,
// dropping the least recently used bucket (or refusing new keys) when it is
// full. [Table.Reserve] takes one token from a key's bucket at a given time
// and returns a [Reservation] that gives the token back if the caller
// decides not to admit after all:
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
// The whole algorithm is in table.go: the token arithmetic as pure
// functions of a bucket and a time, the unlocked LRU of one shard
// (github.com/hashicorp/golang-lru/v2/simplelru) with what it drops when
// full, and the sharded, locked Table around it.
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
// differential test checks this against a replay without it).
// rate.Reservation.CancelAt at the reservation's time would also move the
// limiter's clock back to that time and count the refill since twice,
// which can give more.
//
// When the bucket has since been dropped, moved by Resize, or given a new
// limit or burst, Cancel gives nothing back. Every case errs toward
// admitting fewer, never more. A Reservation points at its bucket and
// remembers the bucket's generation, which changes with its parameters. A
// bucket that leaves its shard's LRU is never put back (Resize moves
// copies), so Cancel never adds a token to another key's bucket, nor to a
// new bucket of the same key.
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
// # Keys
//
// Each shard's LRU is keyed by the key itself, compared by ==: two keys
// never share a bucket, whatever their hashes. The hash given to [New] only
// spreads the keys over the shards, and a key flood aimed at one shard
// (keys whose hashes an attacker could steer) can only churn that shard's
// share of MaxKeys. The price is memory: the LRU's map holds each key, and
// so does its list entry (see below).
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
// it. Each shard is an LRU: every Reserve of a key that has a bucket
// (granted or refused) makes that bucket the shard's most recently used;
// Tokens and Cancel do not. When a key without a bucket arrives at a full
// shard, the table does what Options.RefuseWhenFull says:
//
//   - false (the default): the shard's least recently used bucket is
//     dropped and the new key gets a bucket. Dropping it is counted in
//     [Table.Evictions] unless it has refilled (then nothing was lost).
//     Every key keeps being served; under a flood of distinct keys the
//     buckets not used lately are lost, which lets their keys burst again.
//     Only the least recently used bucket is considered: a bucket used more
//     recently that has refilled (a faster rate, say) stays; with one rate
//     for every key, the least recently used bucket is the one that has had
//     the longest to refill.
//   - true: only a bucket that has refilled is dropped. The shard looks at
//     up to 4 buckets from its least recently used end; the first that has
//     refilled is dropped and the new key gets a bucket, and each that has
//     not is moved to the most recently used end, so that the next new key
//     looks at others: over successive refusals every bucket of the shard
//     is looked at in turn. If none of the 4 has refilled the new key is
//     refused with Result.Full. Keys that have a bucket are always served;
//     new keys are refused until a bucket refills or the table is resized
//     (HAProxy's nopurge).
//
// Both are deliberate choices, unlike nginx's limit_req/limit_conn, which
// fail every request that needs a new entry once the zone is full.
//
// Memory per bucket is simplelru's list entry (three pointers, the key, a
// pointer to the bucket, and 32 bytes of expiry fields that simplelru
// carries for its expirable sibling), the 32-byte bucket (tokens, time,
// limit, burst, generation), and the map's slot (the key and a pointer),
// with the map's free room (a Go map is between 7/16 and 7/8 full): for
// keys shaped like the module's keys.Key (56 bytes), 160 bytes of entry and
// bucket and 95 to 150 of map, so about 255 bytes per bucket at 100,000
// buckets and 311 at 1,000,000 (BenchmarkMemoryPerKey; the baseline map of
// rate.Limiters measured beside it takes about 230 bytes per key, without a
// bound). A hit allocates nothing; a new bucket allocates its list entry
// and the bucket.
//
// A shard can be full while others have room, so eviction (or refusal)
// starts a little before Len reaches MaxKeys: the price of an exact bound
// without a global lock. With keys spread by a good hash, a table of
// 100,000 filled with 100,000 keys holds about 99% of them; of 1,000,000,
// about 99.6%. Small tables use fewer shards (at least 64 buckets per
// shard), so that each shard has enough buckets to choose from.
//
// [Table.Resize] keeps the shards when the new size allows the same number,
// and otherwise moves the buckets into a new set of shards. A shard whose
// buckets still fit keeps them where they are. A shard that must drop
// buckets, or a move to new shards, drops those that have refilled, then
// the least recently updated, and moves the others, as copies, into a new
// LRU (so that a shrunk shard's memory shrinks too).
//
// # Concurrency
//
// A Table is safe for concurrent use by multiple goroutines. Keys are spread
// over up to 64 shards by their hash; each shard is a mutex around an
// unlocked LRU of buckets. Reserve and Tokens lock one shard; Len and
// Evictions visit the shards one after another, so under concurrent use
// their result is not a snapshot of one instant. Resize locks the shards
// one by one, or all of them while it moves buckets to a new set of shards.
// A Reservation may be cancelled from any goroutine; Cancel locks only its
// bucket's shard.
package buckets
