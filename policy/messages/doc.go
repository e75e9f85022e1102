// Package messages limits what an admitted WebSocket connection sends:
// messages and inbound bytes per period, per connection or shared by the
// connections of one key on this instance, and the size of one message.
// It is the `messages` section of a policy (Config), compiled into Limits
// and enforced by a Meter per connection, drawn from a Table that holds
// the per-key state of one guard.
//
// Package ws enforces it in the reads of the connection Guard.Upgrade
// returns. Servers on other WebSocket libraries charge a Meter themselves
// (ws.MeterFrom behind ws.Guard.Middleware): Message for every whole
// message read, or, reading a stream, Charge(1, 0) when a message begins,
// Charge(0, n) as its bytes come and Oversize past MaxSize; and act on the
// Result: wait (read nothing meanwhile: backpressure) or close with its
// code and reason.
//
// # Limits
//
// A limit's action is throttle (spend on credit; the Result's Wait is how
// long until the debt is paid) or close (1008, spending nothing when
// short). max_size closes with 1009. In a dry-run policy nothing waits or
// closes; every charge over a limit is still counted and reported.
// Messages handed on by time t never exceed burst + rate*t per limit
// (TestBucketAgainstRate checks the arithmetic against x/time/rate).
//
// # Bounds
//
// A per-key entry exists while a connection of its key holds it and is
// dropped with the last one; the entries are bounded by max_keys in an
// LRU (a forgotten entry's connections go on sharing it). Counters are by
// limit name, reason and action: no key ever becomes a label.
//
// # Concurrency
//
// A Table is safe for concurrent use; SetLimits reaches live meters at
// their next charge. A Meter belongs to its connection's reading
// goroutine, except Close and Done, which any goroutine may call. The
// OnViolation hook runs on the reading goroutine, outside the locks.
package messages
