// Package redisstore is a policy.Store that keeps connection caps and
// handshake token buckets in Redis, so that every instance of a server
// enforces one global limit.
//
// # Overview
//
// Build a Store with FromConfig from a policy's state.redis section, or
// with New from a go-redis UniversalClient (single node, Sentinel, or
// Cluster with a hash tag in the prefix):
//
//	mem := policy.NewMemoryStore() // the on_error local fallback
//	s, err := redisstore.FromConfig(ctx, cfg.State.Redis, mem, logger)
//	if err != nil { ... }
//	defer s.Close()
//
// Admit evaluates all claims of a handshake in one Lua script, one network
// round trip whatever the number of rules: it checks every claim first and
// commits only when all pass, so a refusal holds no slot and spends no
// token, and because Redis runs scripts atomically the caps are exact
// across instances. Release removes the lease's slots in one round trip.
//
// A connection slot is a lease: a member "<instance>:<lease id>" of a
// sorted set per rule and key. Leases do not expire one by one: each lease
// set has an instance hash in which every instance with leases in the set
// vouches for them until a time, and the Store renews its entry in every
// set it holds leases in every RefreshInterval, in one pipelined round
// trip whose size grows with the sets, not with the leases. The entry of
// an instance that crashed stops being renewed and expires after
// LeaseTTL; an admission that finds the set full then removes that
// instance's members, giving their slots back. A token bucket is a string
// per rule and key holding its tokens and last refill time ("<tokens>
// <ms>"). All times come from the Redis server clock (TIME), so clock skew
// between instances cannot mint tokens; the now passed to Admit is used
// only by the fallback store.
// Keys expire when idle: a bucket once it has refilled, a lease set and its
// hash when the last entry would expire.
//
// Keys are <prefix><rule>:{<key>}:l for leases, :i for the lease set's
// instance hash and <prefix><rule>:{<key>}:t for buckets, where <key> is
// keys.Key.String. Keys are namespaced by rule name, so a policy reload
// that keeps a rule keeps its counts.
//
// # Failure
//
// Every call to Redis is bounded by Options.Timeout (a refresh by
// max(Timeout, RefreshInterval/2)). When Redis errs, times out or is
// unreachable, Admit applies Options.OnError itself and returns no error:
// FailAllow admits, FailDeny refuses with policy.ReasonStoreError, and
// FailLocal asks the Fallback store, an in-memory store with the same
// policy. After BreakerFailures consecutive failures a circuit breaker
// opens: for BreakerCooldown calls skip Redis and get OnError at once, so a
// dead Redis does not cost every handshake its timeout; then one probe call
// tries Redis, and its success closes the breaker.
//
// A timeout counts towards the breaker only when a PING with a longer
// budget fails too (a loaded client host makes calls late with a healthy
// Redis), and calls wait for a pooled connection outside their budget: a
// queue longer than the pool is an overload decided by OnError, not a
// Redis failure.
//
// Recovery never admits past a cap. Redis holds an epoch id and a sequence
// counter that every admission checks: when Redis lost data (restarted
// empty, flushed, failed over to a replica that missed writes), or after
// the breaker opened, the instance first registers every live lease again,
// whatever the caps, in one sync round trip, and only then lets Redis
// decide; while the other instances have not done the same, a cap already
// reached is refused and anything else goes to OnError. FailLocal admits
// this instance's share of each limit: the limit divided by the live
// instances of a heartbeat registry in Redis, less what this instance
// already holds. Releases that could not reach Redis are kept (up to 65536)
// and sent with the next sync; an admission that timed out may still have
// run in Redis, and its member is released the same way.
//
// Shutdown stops admitting and removes every live lease in one round trip,
// so that other instances get the capacity at once.
//
// Admit returns an error only when its context ends before Redis answers,
// when the Fallback store fails, or after Close or Shutdown (ErrClosed).
// Snapshot and Health (for prom.Options.Health) expose the failure counters
// and the breaker state for metrics; the Store is a policy.Inspector whose
// figures are read from Redis on demand, bounded in keys and time.
//
// # Concurrency
//
// A Store is safe for concurrent use by any number of goroutines. Each
// Store runs one background goroutine, the lease refresher, which Close
// stops, and a sync may run on a goroutine of its own. Close does not
// release live leases (their connections may still be open); like a crash,
// it leaves them to expire after LeaseTTL. Shutdown releases them. Several
// Stores may share one Redis and prefix: that is the point. Lease members
// stay distinct because every Store adds a random part to its InstanceID.
package redisstore
