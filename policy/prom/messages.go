package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy/messages"
)

// MessagesCollector exports the counters of a guard's messages limits
// (ws.Guard.Messages), read at every scrape:
// <namespace>_messages_limited_total{limit,reason,action} and
// <namespace>_message_bytes_limited_total{limit,reason,action} (charges
// over a limit and the bytes they carried; reason messages, bytes or
// size; action throttle, close or dry_run),
// <namespace>_message_closes_total{limit,reason} (connections closed) and
// <namespace>_message_keys (per-key entries). Limits are named by the
// policy (max_size for the size bound); keys are never labels. Register
// it once per guard; only opts.Namespace and opts.ConstLabels are used.
type MessagesCollector struct {
	t                           *messages.Table
	limited, bytes, closes, key *prometheus.Desc
}

// NewMessagesCollector returns a collector of t's counters.
func NewMessagesCollector(t *messages.Table, opts Options) *MessagesCollector {
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	name := func(n string) string { return prometheus.BuildFQName(ns, "", n) }
	cl := opts.ConstLabels
	lra := []string{"limit", "reason", "action"}
	return &MessagesCollector{
		t: t,
		limited: prometheus.NewDesc(name("messages_limited_total"),
			"Message charges over a messages limit (throttled, closed, or in dry run would have been), by limit, reason and action.", lra, cl),
		bytes: prometheus.NewDesc(name("message_bytes_limited_total"),
			"Bytes carried by the message charges over a messages limit, by limit, reason and action.", lra, cl),
		closes: prometheus.NewDesc(name("message_closes_total"),
			"Connections closed by a messages limit (1008) or max_size (1009), by limit and reason.", []string{"limit", "reason"}, cl),
		key: prometheus.NewDesc(name("message_keys"),
			"Per-key message limit entries (keys with a live connection on this instance).", nil, cl),
	}
}

// Describe implements prometheus.Collector.
func (c *MessagesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.limited
	ch <- c.bytes
	ch <- c.closes
	ch <- c.key
}

// Collect implements prometheus.Collector.
func (c *MessagesCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.t.Stats() {
		ch <- prometheus.MustNewConstMetric(c.limited, prometheus.CounterValue, float64(st.Messages), st.Limit, st.Reason, st.Action)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(st.Bytes), st.Limit, st.Reason, st.Action)
		if st.Action == messages.ActionClose {
			ch <- prometheus.MustNewConstMetric(c.closes, prometheus.CounterValue, float64(st.Messages), st.Limit, st.Reason)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.key, prometheus.GaugeValue, float64(c.t.Keys()))
}
