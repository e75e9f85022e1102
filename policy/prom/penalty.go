package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy/penalty"
)

// PenaltyCollector exports a penalty.Engine's counters, read at every
// scrape, by penalty name (never by key):
// <namespace>_penalty_offences_total{penalty,kind},
// <namespace>_penalty_bans_total{penalty} (issued here, set by hand or
// received from another instance), <namespace>_penalty_bans_dropped_total{penalty}
// (not issued: the ban table was full of active bans),
// <namespace>_penalty_bans_active{penalty}, <namespace>_penalty_offenders{penalty}
// and <namespace>_penalty_bans_unshared_total. A penalty changed by a
// reload starts its counters again. Only opts.Namespace and
// opts.ConstLabels are used.
type PenaltyCollector struct {
	e                                          *penalty.Engine
	offences, bans, dropped, active, offenders *prometheus.Desc
	unshared                                   *prometheus.Desc
}

// NewPenaltyCollector returns a collector of e's counters.
func NewPenaltyCollector(e *penalty.Engine, opts Options) *PenaltyCollector {
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	cl := opts.ConstLabels
	name := func(n string) string { return prometheus.BuildFQName(ns, "penalty", n) }
	by := []string{"penalty"}
	return &PenaltyCollector{
		e:         e,
		offences:  prometheus.NewDesc(name("offences_total"), "Offences counted, by penalty and kind.", []string{"penalty", "kind"}, cl),
		bans:      prometheus.NewDesc(name("bans_total"), "Bans issued, set by hand or received from other instances.", by, cl),
		dropped:   prometheus.NewDesc(name("bans_dropped_total"), "Bans not issued because the ban table was full of active bans.", by, cl),
		active:    prometheus.NewDesc(name("bans_active"), "Bans in force now (dry-run ones included).", by, cl),
		offenders: prometheus.NewDesc(name("offenders"), "Keys in the offence table.", by, cl),
		unshared:  prometheus.NewDesc(name("bans_unshared_total"), "Bans that could not be published to other instances.", nil, cl),
	}
}

// Describe implements prometheus.Collector.
func (c *PenaltyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.offences, c.bans, c.dropped, c.active, c.offenders, c.unshared} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PenaltyCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.e.Stats() {
		for k, n := range s.Offences {
			ch <- prometheus.MustNewConstMetric(c.offences, prometheus.CounterValue, float64(n), s.Penalty, k.String())
		}
		ch <- prometheus.MustNewConstMetric(c.bans, prometheus.CounterValue, float64(s.Bans), s.Penalty)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped), s.Penalty)
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(s.Active), s.Penalty)
		ch <- prometheus.MustNewConstMetric(c.offenders, prometheus.GaugeValue, float64(s.Offenders), s.Penalty)
	}
	ch <- prometheus.MustNewConstMetric(c.unshared, prometheus.CounterValue, float64(c.e.Lost()))
}
