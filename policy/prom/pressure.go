package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy/pressure"
)

// PressureCollector exports a pressure.Monitor's state, read at every
// scrape: <namespace>_pressure_level (0 or 1), and per configured signal
// (connections, fds, heap) <namespace>_pressure_signal_ratio{signal} (the
// last value over its ceiling; -1 when unavailable) and
// <namespace>_pressure_signal_on{signal}. Register it once per monitor;
// only opts.Namespace and opts.ConstLabels are used.
type PressureCollector struct {
	m                *pressure.Monitor
	level, ratio, on *prometheus.Desc
}

// NewPressureCollector returns a collector of m's state.
func NewPressureCollector(m *pressure.Monitor, opts Options) *PressureCollector {
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	name := func(n string) string { return prometheus.BuildFQName(ns, "pressure", n) }
	return &PressureCollector{
		m: m,
		level: prometheus.NewDesc(name("level"),
			"Pressure level: 1 while any configured signal is past its enter threshold and not yet below its leave threshold.", nil, opts.ConstLabels),
		ratio: prometheus.NewDesc(name("signal_ratio"),
			"A pressure signal's last value over its ceiling (-1 when it cannot be read).", []string{"signal"}, opts.ConstLabels),
		on: prometheus.NewDesc(name("signal_on"),
			"1 while a pressure signal is on.", []string{"signal"}, opts.ConstLabels),
	}
}

// Describe implements prometheus.Collector.
func (c *PressureCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.level
	ch <- c.ratio
	ch <- c.on
}

// Collect implements prometheus.Collector.
func (c *PressureCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Status()
	ch <- prometheus.MustNewConstMetric(c.level, prometheus.GaugeValue, float64(st.Level))
	for _, s := range st.Signals {
		on := 0.0
		if s.On {
			on = 1
		}
		ch <- prometheus.MustNewConstMetric(c.ratio, prometheus.GaugeValue, s.Ratio, s.Name)
		ch <- prometheus.MustNewConstMetric(c.on, prometheus.GaugeValue, on, s.Name)
	}
}
