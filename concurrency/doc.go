// Package concurrency counts connection slots per key under a cap.
//
// # Overview
//
// A [Counter] holds, for each key, the number of slots (open connections)
// that key holds. [Counter.Acquire] takes a slot only while the key holds
// fewer than the limit it is given; [Counter.Release] gives one back. The
// limit is passed on every call rather than stored, so a policy reload or a
// per-user tier applies to the next Acquire without touching the counter.
//
//	c := concurrency.New(func(k keys.Key) uint64 { return k.Hash(seed) })
//	if !c.Acquire(k, 20) {
//		// the key already holds 20 slots: reject the handshake
//	}
//	defer c.Release(k)
//
// The cap is exact: with limit N, under any interleaving of Acquire calls,
// exactly N succeed while no slot is released.
//
// # Bounded memory
//
// An entry exists only while its count is above zero: Release deletes the
// entry that reaches zero, and a key that never got a slot leaves no trace.
// The memory a Counter holds is therefore proportional to the keys holding
// slots (live connections), not to the number of keys ever seen. Each shard
// keeps its counts in a Go map; since Go maps keep their memory when
// entries are deleted, a shard whose keys fall below an eighth of the most
// it has held copies them into a new map (at constant cost per Release,
// amortised), so it holds memory for the keys it has, not for the most it
// ever had.
//
// Counts never live in an evicting cache: an LRU that dropped a live
// counter would reset it, and a flood of distinct keys would then free the
// attacker's own slots. A Counter never forgets a key that holds a slot.
//
// Release never drives a count below zero: releasing a key that holds no
// slot returns false and changes nothing. Releasing exactly once per
// successful Acquire is the caller's duty (the connection's Close, not the
// HTTP handler's defer); a Counter cannot tell one connection's slot from
// another's.
//
// # Concurrency
//
// A Counter is safe for concurrent use by multiple goroutines. Keys are
// spread over 64 shards by the hash function given to [New], each shard a
// mutex and a map; the hash only picks the shard, and keys are compared by
// ==, so keys whose hashes collide are still counted apart. Acquire,
// Release and Count lock one shard. Len, Total and Top visit the shards one
// after another, so under concurrent updates their result is not a
// snapshot of one instant; each shard's part of it is.
package concurrency
