package policy

import "time"

// StoreHealth is a snapshot of the health of a store that depends on
// something that can fail (a Redis server), for metrics: redisstore's
// Store.Health returns one, and prom.Options.Health reads it at every
// scrape, so producing it must be cheap and must not call the backend.
type StoreHealth struct {
	// OnError is the failure mode: "allow", "deny" or "local".
	OnError string
	// BreakerOpen reports whether calls currently skip the backend.
	BreakerOpen bool
	// Synced reports whether the backend may decide admissions (this
	// instance's live slots are registered there).
	Synced bool
	// Errors counts failed calls by kind (a small fixed set of kinds).
	Errors map[string]uint64
	// Degraded counts admissions decided by OnError instead of the backend.
	Degraded uint64
	// LeasesLost counts live slots found missing from the backend.
	LeasesLost uint64
	// LeasesRegistered counts live slots written to the backend again (the
	// lost ones and those admitted under OnError).
	LeasesRegistered uint64
	// Instances is the number of live instances sharing the backend.
	Instances int
	// LatencyBounds are the upper bounds in seconds of the call latency
	// histogram; LatencyCounts has one count per bound (not cumulative)
	// and a last one for larger values; LatencySum is their total.
	LatencyBounds []float64
	LatencyCounts []uint64
	LatencySum    time.Duration
}
