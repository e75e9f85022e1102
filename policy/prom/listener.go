package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy/listener"
)

// ListenerCollector exports a listener.Listener's counters, read at every
// scrape: <namespace>_listener_accepted_total,
// <namespace>_listener_refused_total{reason} (per_ip, per_subnet, global,
// rate) and <namespace>_listener_live_connections. Register it once per
// listener; only opts.Namespace and opts.ConstLabels are used.
type ListenerCollector struct {
	l                     *listener.Listener
	accepted, refused, up *prometheus.Desc
}

// NewListenerCollector returns a collector of l's counters.
func NewListenerCollector(l *listener.Listener, opts Options) *ListenerCollector {
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	name := func(n string) string { return prometheus.BuildFQName(ns, "listener", n) }
	return &ListenerCollector{
		l: l,
		accepted: prometheus.NewDesc(name("accepted_total"),
			"TCP connections admitted by the listener caps.", nil, opts.ConstLabels),
		refused: prometheus.NewDesc(name("refused_total"),
			"TCP connections refused and reset at accept, by the cap that refused them.", []string{"reason"}, opts.ConstLabels),
		up: prometheus.NewDesc(name("live_connections"),
			"TCP connections admitted by the listener and not yet closed.", nil, opts.ConstLabels),
	}
}

// Describe implements prometheus.Collector.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.accepted
	ch <- c.refused
	ch <- c.up
}

// Collect implements prometheus.Collector.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(st.Accepted))
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, float64(st.Live))
	for _, reason := range []string{listener.ReasonPerIP, listener.ReasonPerSubnet, listener.ReasonGlobal, listener.ReasonRate} {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(st.Refused[reason]), reason)
	}
}
