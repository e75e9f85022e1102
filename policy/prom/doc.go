// Package prom exports a wslimit Limiter's decisions as Prometheus metrics.
// It is a separate package so that the core does not force
// github.com/prometheus/client_golang on applications that do not use it.
//
// # Overview
//
// An Observer is both a policy.Observer, told of every decision and every
// release, and a prometheus.Collector:
//
//	store := policy.NewMemoryStore()
//	obs := prom.New(prom.Options{Store: store})
//	prometheus.MustRegister(obs)
//	g, err := ws.New(p, ws.Options{Store: store, Observer: obs})
//	...
//	http.Handle("/metrics", promhttp.Handler())
//
// With a Redis store, pass its Health method as Options.Health for the
// store health metrics, and its error counter; do not pass it as Store,
// whose per-rule figures it reads from Redis with SCAN (ws's inspection
// page uses them):
//
//	obs := prom.New(prom.Options{Health: rs.Health, StoreErrors: func() uint64 { return rs.Snapshot().Errors }})
//
// No key (client IP, subnet, user id, cookie, header value) ever becomes a
// label: the only labels are rule (bounded by the policy's rules, at most
// 32 per policy, plus the rules of earlier policies after a
// reload), reason (a fixed set) and result (four values). Decision keys are
// never read.
//
// # Metrics
//
// With the default namespace "wslimit":
//
//	wslimit_decisions_total{result}              counter   every decision: admitted, rejected, exempt, dry_run_would_reject
//	wslimit_rejections_total{rule,reason}        counter   enforced refusals; rule is "" for store_error
//	wslimit_dry_run_would_reject_total{rule,reason} counter refusals a dry-run policy did not enforce
//	wslimit_admissions_total{rule}               counter   admitted handshakes, once per rule that applied
//	wslimit_live_connections{rule}               gauge     slots held by this process's connections, per capped rule
//	wslimit_invalid_tokens_total                 counter   handshakes whose token failed verification
//	wslimit_decision_seconds                     histogram policy evaluation time, store round trip included
//	wslimit_tracked_keys{rule}                   gauge     keys holding a slot (Options.Store)
//	wslimit_buckets{rule}                        gauge     token buckets tracked (Options.Store)
//	wslimit_bucket_evictions_total{rule}         counter   buckets dropped before refilling (Options.Store)
//	wslimit_store_errors_total                   counter   failed store calls (Options.StoreErrors)
//	wslimit_store_breaker_open                   gauge     1 while the breaker is open (Options.Health)
//	wslimit_store_synced                         gauge     1 while this instance's slots are registered (Options.Health)
//	wslimit_store_instances                      gauge     live instances sharing the store (Options.Health)
//	wslimit_store_call_seconds                   histogram store call latency (Options.Health)
//	wslimit_store_call_errors_total{kind}        counter   failed store calls by kind (Options.Health)
//	wslimit_store_degraded_decisions_total{on_error} counter admissions decided by on_error (Options.Health)
//	wslimit_store_leases_lost_total              counter   live slots found missing from the store (Options.Health)
//	wslimit_store_leases_registered_total        counter   live slots written to the store again (Options.Health)
//
// Reasons are those of policy.Reason: connections, rate, table_full,
// missing_identity, store_error. A decision counts under exactly one
// result. A dry-run decision that would have been refused by one rule may
// still hold the slots of the rules that admitted it; those count in
// admissions_total and live_connections like any admission, so that
// live_connections always mirrors the store's counts: +1 per capped rule
// on admission, -1 on release. Series appear when first used, except the
// four decisions_total series, which start at zero. The tracked keys,
// buckets, evictions and store errors are read from the store at scrape
// time.
//
// docs/operations.md lists alert examples.
//
// # Concurrency
//
// An Observer is safe for concurrent use: Decided and Released run on the
// handshake path of many goroutines while Collect runs on scrapes. Decided
// does not allocate once a rule's series exist: each rule's counters are
// cached in a copy-on-write map read without a lock, and prometheus
// counters, gauges and histograms are updated atomically. Register an
// Observer in one registry only, and give one Observer to one Limiter (two
// guards sharing a registry need two Observers with different
// ConstLabels or Namespace).
package prom
