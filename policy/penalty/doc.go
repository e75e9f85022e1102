// Package penalty bans keys that offend repeatedly: the state behind a
// policy's penalties section.
//
// # Overview
//
// A penalty counts offences by one key (an address, a subnet, a header, a
// verified claim, a cookie): refusals by chosen rules or reasons, tokens
// that fail verification, connections that close soon after admission,
// message-limit violations. Threshold offences within a window earn a ban
// of Ban, multiplied by Factor on each repeat up to MaxBan, and forgotten
// after a quiet period of Forgive. Package policy compiles the section,
// takes the keys from requests and asks a Table before anything else is
// evaluated; this package keeps the tables and answers.
//
// # Bounds
//
// Each penalty has an offence table (golang-lru, MaxKeys; the least recent
// offender is forgotten when full) and a ban table (MaxBans) that never
// evicts an active ban: when it is full of active bans a new ban is not
// issued (counted in Stats.Dropped). A ban in force is never shortened by
// another ban; only Unban lifts it.
//
// # Sharing
//
// With Options.Shared (redisstore.Store.Bans) and Run, bans issued by
// any instance are published and cached by every instance until they
// expire; admissions check bans only in memory.
//
// # Concurrency
//
// Engine, Table and Offender are safe for concurrent use. Time is given to
// Table methods by the caller (the Limiter's clock), and Options.Now is the
// clock of the Engine's own methods: tests inject both.
package penalty
