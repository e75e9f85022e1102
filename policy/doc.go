// Package policy holds wslimit's rules and evaluates them.
//
// # Overview
//
// A policy combines concurrent-connection caps with token-bucket handshake
// rate limits, each keyed by client IP, CIDR subnet, a request header, a
// verified identity or one global key. It is written as YAML (LoadFile,
// Parse) or built in Go (New with a Config); both paths validate the same
// way, and errors name the field — with file:line:column when the policy
// came from a file. Every problem is reported at once, sorted by position
// (the joined error's Unwrap() []error lists them, each an *Error).
// Unknown fields are errors, and so are settings that would have no
// effect (state.redis without store: redis, for one).
//
// A Limiter evaluates every rule that applies to a request together, all
// or nothing, against a Store: a handshake is admitted only if every rule
// admits it, and a refused handshake holds no connection slot and has spent
// no token in any rule. An admission is a *Decision whose Release frees its
// slots exactly once.
//
// # State
//
// MemoryStore keeps state in this process: exact sharded counters whose
// entries exist only while a key holds slots, and per-rule token-bucket
// tables bounded by max_keys (LRU eviction). State is kept by rule name, so a policy
// reload keeps the counts of the rules it keeps. The Store interface is
// what a shared store (package redisstore) implements: one call per
// admission carrying every rule's claim.
//
// # Concurrency
//
// Policy is immutable. Limiter, Decision.Release and MemoryStore are safe
// for concurrent use; Limiter.SetPolicy swaps the policy atomically while
// handshakes are in flight.
package policy
