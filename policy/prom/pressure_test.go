package prom

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/policy/pressure"
)

// TestPressureCollector: the level gauge and the signal series follow the
// monitor's samples.
func TestPressureCollector(t *testing.T) {
	conns := 10
	m := pressure.New(&pressure.Config{Connections: &pressure.Signal{Cap: 100, Enter: 0.5}, RefuseUnverified: true},
		pressure.Options{Read: func() pressure.Readings { return pressure.Readings{Conns: conns, FDs: -1, Heap: -1} }})
	c := NewPressureCollector(m, Options{})
	m.Sample()
	want := `
# HELP wslimit_pressure_level Pressure level: 1 while any configured signal is past its enter threshold and not yet below its leave threshold.
# TYPE wslimit_pressure_level gauge
wslimit_pressure_level 0
# HELP wslimit_pressure_signal_on 1 while a pressure signal is on.
# TYPE wslimit_pressure_signal_on gauge
wslimit_pressure_signal_on{signal="connections"} 0
# HELP wslimit_pressure_signal_ratio A pressure signal's last value over its ceiling (-1 when it cannot be read).
# TYPE wslimit_pressure_signal_ratio gauge
wslimit_pressure_signal_ratio{signal="connections"} 0.1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	conns = 60
	m.Sample()
	if err := testutil.CollectAndCompare(c, strings.NewReader(strings.NewReplacer("level 0", "level 1", `"} 0
`, `"} 1
`, "0.1", "0.6").Replace(want))); err != nil {
		t.Error(err)
	}
}
