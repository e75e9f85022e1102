package prom_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/prom"
)

type fakeHealth struct{ h policy.StoreHealth }

func (f *fakeHealth) Health() policy.StoreHealth { return f.h }

// TestStoreHealth: Options.Health exports the store's breaker, sync state,
// instances, call latency histogram, errors by kind, degraded decisions
// and lease counters, read at scrape time.
func TestStoreHealth(t *testing.T) {
	f := &fakeHealth{policy.StoreHealth{
		OnError: "local", BreakerOpen: true, Instances: 3, Degraded: 7, LeasesLost: 2, LeasesRegistered: 5,
		Errors:        map[string]uint64{"timeout": 4, "unreachable": 1},
		LatencyBounds: []float64{0.001, 0.01}, LatencyCounts: []uint64{3, 1, 2}, LatencySum: 50 * time.Millisecond,
	}}
	obs := prom.New(prom.Options{Health: f.Health})
	reg := prometheus.NewRegistry()
	reg.MustRegister(obs)
	want := `
# HELP wslimit_store_breaker_open 1 while the store's circuit breaker is open (calls skip the backend and on_error decides).
# TYPE wslimit_store_breaker_open gauge
wslimit_store_breaker_open 1
# HELP wslimit_store_call_errors_total Failed store calls by kind: timeout, unreachable, moved, readonly, loading, oom, refused, other, overload (no connection in time; not sent).
# TYPE wslimit_store_call_errors_total counter
wslimit_store_call_errors_total{kind="timeout"} 4
wslimit_store_call_errors_total{kind="unreachable"} 1
# HELP wslimit_store_call_seconds Duration of the store's calls to the backend (admission, release, sync).
# TYPE wslimit_store_call_seconds histogram
wslimit_store_call_seconds_bucket{le="0.001"} 3
wslimit_store_call_seconds_bucket{le="0.01"} 4
wslimit_store_call_seconds_bucket{le="+Inf"} 6
wslimit_store_call_seconds_sum 0.05
wslimit_store_call_seconds_count 6
# HELP wslimit_store_degraded_decisions_total Admissions decided by on_error instead of the backend.
# TYPE wslimit_store_degraded_decisions_total counter
wslimit_store_degraded_decisions_total{on_error="local"} 7
# HELP wslimit_store_instances Live instances sharing the backend, as this instance last read them.
# TYPE wslimit_store_instances gauge
wslimit_store_instances 3
# HELP wslimit_store_leases_lost_total Live slots found missing from the backend (data lost, or expired during an outage); each is registered again.
# TYPE wslimit_store_leases_lost_total counter
wslimit_store_leases_lost_total 2
# HELP wslimit_store_leases_registered_total Live slots written to the backend again: the lost ones and those admitted under on_error.
# TYPE wslimit_store_leases_registered_total counter
wslimit_store_leases_registered_total 5
# HELP wslimit_store_synced 1 while this instance's live slots are registered in the backend, so that it may decide admissions.
# TYPE wslimit_store_synced gauge
wslimit_store_synced 0
`
	names := []string{"wslimit_store_breaker_open", "wslimit_store_call_errors_total", "wslimit_store_call_seconds",
		"wslimit_store_degraded_decisions_total", "wslimit_store_instances", "wslimit_store_leases_lost_total",
		"wslimit_store_leases_registered_total", "wslimit_store_synced"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	f.h.BreakerOpen = false
	if got := testutil.ToFloat64(gaugeOf(t, reg, "wslimit_store_breaker_open")); got != 0 {
		t.Fatalf("breaker gauge = %v after it closed, want 0", got)
	}
}

// gaugeOf gathers one unlabelled gauge as a collector for testutil.
func gaugeOf(t *testing.T, reg *prometheus.Registry, name string) prometheus.Gauge {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}
