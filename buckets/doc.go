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
//	t := buckets.New[keys.Key](buckets.Options{MaxKeys: 100_000})
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
// functions of a bucket, its parameters and a time, the unlocked LRU of
// one shard (github.com/hashicorp/golang-lru/v2/simplelru) with its
// parameter sets and what it drops when full, and the sharded, locked
// Table around it.
//
// # Arithmetic
//
// A bucket is two numbers, its tokens and the time they were counted, with
// a limit and a burst (see "Parameter sets" below), and follows
// golang.org/x/time/rate for everything the table does with it
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
// admitting fewer, never more. A Reservation names its bucket's place in
// the shard's LRU and the number of buckets the shard had removed from it
// then; the shard remembers the last 32 removals (a bucket that takes
// other parameters is removed from its place too, and a shard that Resize
// rebuilds counts every bucket as removed). Cancel gives back only when
// none of the removals since was its bucket's and the shard remembers
// them all, so it never adds a token to another key's bucket, nor to a new
// bucket of the same key, nor to a bucket under other parameters. With
// more than 32 removals in the shard between the Reserve and the Cancel
// (a flood of new keys at a full table, within the microseconds between
// the two), Cancel gives nothing back. Cancel, like Reserve, makes the
// bucket its shard's most recently used: the LRU holds the buckets by
// value, and a bucket is updated by putting it back.
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
// The table keeps no key. It knows a key by a 64-bit digest,
// hash/maphash.Comparable under a seed that [New] draws at random for the
// table and that never leaves it: keys equal under == have the same digest.
// The top 6 bits choose the key's shard; the low 6 bits give way to the
// index of the bucket's parameter set, so two keys share a bucket when
// their digests agree in the other 58 bits.
//
// The threat is a key that drains another's bucket: an attacker who finds
// a key (an address, a header value) whose digest matches a victim's would
// spend the victim's tokens, or have the victim spend his. Without the
// seed no one can compute digests, so collisions cannot be searched for
// offline, and the table shows no digest: each try is a handshake, and a
// try matches a given victim with probability 2^-58 (about 3 × 10^17 tries,
// nine thousand years at a million handshakes a second). Sharing a bucket
// with some key, not a chosen one, is likelier: a table of n keys takes
// about 2^58 / n new keys per such collision (3 × 10^11 at n = 1,000,000,
// days of a flood of a million new keys a second); the two keys, most
// likely both flood keys, then share one bucket until it is dropped, each
// limited a little sooner, which gives no one more tokens. maphash is not
// a cryptographic hash: this rests on its seeded mixing, which is what Go's
// own maps rely on against hash flooding. A flood aimed at one shard can
// only churn that shard's share of MaxKeys.
//
// A 128-bit digest would put even untargeted sharing out of reach, but not
// in the memory this table is meant to take with simplelru as its
// structure: a 16-byte LRU key makes the list entry a 96-byte allocation
// and the map slot 24 bytes, about 152 bytes per bucket at 1,000,000 (136
// with an 8-byte value, which cannot hold a bucket), against 118 (see
// "Bounded memory and the full table").
//
// # Parameter sets
//
// The limit and burst of every bucket are kept once per shard: a shard has
// up to 64 parameter sets, and a bucket's place in the LRU names its set.
// A key's Reserve looks under the set of the parameters it passes; if the
// key has no bucket there, under each other set in use in the shard (one
// map lookup per set: a policy with tiers pays that for each new key), and
// a bucket found under other parameters moves to the new set (see
// Arithmetic). A set with no bucket left is used for the next new
// parameters. When a shard has 64 sets with buckets (a rule with dozens of
// tiers, or many reloads that changed its rates while old buckets stay)
// and new parameters come, the set with the fewest buckets goes: its
// buckets are dropped, counted as evictions unless they had refilled, in
// either mode.
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
// (granted or refused) makes that bucket the shard's most recently used,
// and so does a Cancel that gives a token back; Tokens does not. When a
// key without a bucket arrives at a full shard, the table does what
// Options.RefuseWhenFull says:
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
// Memory per bucket, whatever the key's type, is simplelru's list entry
// (three pointers, the 8-byte LRU key, the 16-byte bucket held by value,
// and 32 bytes of expiry fields that simplelru carries for its expirable
// sibling: 80 bytes) and the map's slot (the LRU key and a pointer, 16
// bytes and a control byte) with the map's free room (a Go map is between
// 7/16 and 7/8 full: 19 to 39 bytes), so about 104 bytes per bucket at
// 100,000 buckets and 118 at 1,000,000, the worst case: the maps are just
// past a doubling (BenchmarkMemoryPerKey; the baseline map of
// rate.Limiters measured beside it takes 174 and 231 bytes per key, without
// a bound). A shard adds a fixed few hundred bytes. A hit allocates
// nothing; a new bucket allocates its list entry.
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
// the least recently updated, and moves the others into a new LRU (so
// that a shrunk shard's memory shrinks too); their reservations give
// nothing back.
//
// # Concurrency
//
// A Table is safe for concurrent use by multiple goroutines. Keys are spread
// over up to 64 shards by their digest; each shard is a mutex around an
// unlocked LRU of buckets. Reserve and Tokens lock one shard; Len and
// Evictions visit the shards one after another, so under concurrent use
// their result is not a snapshot of one instant. Resize locks the shards
// one by one, or all of them while it moves buckets to a new set of shards.
// A Reservation may be cancelled from any goroutine; Cancel locks only its
// bucket's shard.
package buckets
