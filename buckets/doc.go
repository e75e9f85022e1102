// Package buckets keeps a token bucket per key in a table of bounded size.
//
// # Overview
//
// A [Table] maps keys to token buckets (golang.org/x/time/rate Limiters)
// kept in least-recently-used order, at most Options.MaxKeys of them.
// [Table.Reserve] takes one token from a key's bucket at a given time and
// returns a [Reservation] that gives the token back if the caller decides
// not to admit after all:
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
// A refused Reserve spends nothing: the token is reserved, the delay read
// from the reservation (that delay is Result.RetryAfter, the bucket's real
// refill time) and the reservation cancelled, all under the shard lock. A
// Reservation's Cancel has the semantics of rate.Reservation.CancelAt:
// when other tokens were taken from the same bucket in between, it restores
// less than a whole token. That errs toward admitting fewer, never more.
//
// # Time
//
// Time is a parameter: the Table never reads the clock. Each shard keeps the
// latest time it was given and takes an earlier time as that one, because
// x/time/rate would otherwise count the refill between the two times twice
// when two callers' clocks are read in one order and their calls run in the
// other.
//
// # Bounded memory and the full table
//
// A bucket that has refilled holds as many tokens as a new one: it carries
// no state and may be dropped. Buckets that have not refilled do carry state
// (a client that just spent its burst), and a table that drops them lets
// that client start afresh. When a key without a bucket arrives at a full
// table, the table first drops the least recently used bucket if it has
// refilled. If it has not, the table does what Options.RefuseWhenFull says:
//
//   - false (the default): evict the least recently used bucket anyway and
//     count it in [Table.Evictions]. Every key keeps being served; under a
//     flood of distinct keys the oldest buckets are lost, which lets their
//     keys burst again.
//   - true: refuse the new key with Result.Full and keep every bucket. Keys
//     that have a bucket are always served; new keys are refused until a
//     bucket refills or the table is resized (HAProxy's nopurge).
//
// Both are deliberate choices, unlike nginx's limit_req/limit_conn, which
// fail every request that needs a new entry once the zone is full.
//
// The table is split into shards, each its own LRU with a fixed share of
// MaxKeys; the shares add up to exactly MaxKeys, so Len never exceeds it.
// The price of an exact bound without a global lock: a shard can be full
// while others have room, so eviction (or refusal) starts a little before
// Len reaches MaxKeys. With keys spread by a good hash, a table of 100,000
// filled with 100,000 keys holds about 99% of them; of 1,000,000, about
// 99.6%. Small tables use fewer shards (at least 64 buckets per shard) to
// keep the eviction order close to a global LRU. [Table.Resize] keeps the
// shards when the new size allows the same number and otherwise moves the
// buckets into a new set of shards. A bucket is never reused for
// another key once dropped: a Reservation still points at it, and its
// Cancel must not add a token to somebody else's bucket.
//
// # Concurrency
//
// A Table is safe for concurrent use by multiple goroutines. Keys are spread
// over up to 64 shards by the hash function given to [New]; each shard is a
// mutex around an unlocked LRU of buckets, padded so that neighbouring
// shards do not share a cache line. Reserve and Tokens lock one shard; Len
// and Evictions visit the shards one after another, so under concurrent
// use their result is not a snapshot of one instant. Resize locks the
// shards one by one, or all of them while it moves buckets to a new set of
// shards. A Reservation
// may be cancelled from any goroutine; Cancel locks only its bucket.
package buckets
