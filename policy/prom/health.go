package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy"
)

// healthDescs describe the store health metrics (Options.Health).
type healthDescs struct {
	breaker, synced, instances   *prometheus.Desc
	latency, errors, degraded    *prometheus.Desc
	leasesLost, leasesRegistered *prometheus.Desc
}

func newHealthDescs(ns string, cl prometheus.Labels) healthDescs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, cl)
	}
	return healthDescs{
		breaker:          d("store_breaker_open", "1 while the store's circuit breaker is open (calls skip the backend and on_error decides)."),
		synced:           d("store_synced", "1 while this instance's live slots are registered in the backend, so that it may decide admissions."),
		instances:        d("store_instances", "Live instances sharing the backend, as this instance last read them."),
		latency:          d("store_call_seconds", "Duration of the store's calls to the backend (admission, release, sync)."),
		errors:           d("store_call_errors_total", "Failed store calls by kind: timeout, unreachable, moved, readonly, loading, oom, refused, other, overload (no connection in time; not sent).", "kind"),
		degraded:         d("store_degraded_decisions_total", "Admissions decided by on_error instead of the backend.", "on_error"),
		leasesLost:       d("store_leases_lost_total", "Live slots found missing from the backend (data lost, or expired during an outage); each is registered again."),
		leasesRegistered: d("store_leases_registered_total", "Live slots written to the backend again: the lost ones and those admitted under on_error."),
	}
}

func (h *healthDescs) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{h.breaker, h.synced, h.instances, h.latency, h.errors, h.degraded, h.leasesLost, h.leasesRegistered} {
		ch <- d
	}
}

func (h *healthDescs) collect(ch chan<- prometheus.Metric, st policy.StoreHealth) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(h.breaker, boolValue(st.BreakerOpen))
	gauge(h.synced, boolValue(st.Synced))
	gauge(h.instances, float64(st.Instances))
	counter(h.degraded, st.Degraded, st.OnError)
	counter(h.leasesLost, st.LeasesLost)
	counter(h.leasesRegistered, st.LeasesRegistered)
	for kind, n := range st.Errors {
		counter(h.errors, n, kind)
	}
	if len(st.LatencyCounts) == len(st.LatencyBounds)+1 {
		buckets := make(map[float64]uint64, len(st.LatencyBounds))
		var cum uint64
		for i, b := range st.LatencyBounds {
			cum += st.LatencyCounts[i]
			buckets[b] = cum
		}
		cum += st.LatencyCounts[len(st.LatencyBounds)]
		ch <- prometheus.MustNewConstHistogram(h.latency, cum, st.LatencySum.Seconds(), buckets)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
