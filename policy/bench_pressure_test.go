package policy

import (
	"context"
	"testing"

	"github.com/wslimit/wslimit/policy/pressure"
)

const benchPressurePolicy = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 100000}
  - {name: everyone, key: global, connections: 100000000}
`

const benchPressureSection = `pressure:
  connections: {cap: 100}
  scale: {rules: [per-ip, per-subnet], factor: 0.5}
`

// BenchmarkAdmitPressure measures one admission plus its release of the
// 3-rule policy without a pressure section, with one and a monitor at
// level 0 (one atomic load more), and at level 1 (two claims scaled).
func BenchmarkAdmitPressure(b *testing.B) {
	for _, bc := range []struct {
		name    string
		section bool
		conns   int
	}{{"none", false, 0}, {"level0", true, 0}, {"level1", true, 100}} {
		b.Run(bc.name, func(b *testing.B) {
			doc := benchPressurePolicy
			if bc.section {
				doc += benchPressureSection
			}
			p, err := Parse([]byte(doc), "bench.yaml")
			if err != nil {
				b.Fatal(err)
			}
			mon := pressure.New(nil, pressure.Options{Read: func() pressure.Readings {
				return pressure.Readings{Conns: bc.conns, FDs: -1, Heap: -1}
			}})
			l := NewLimiter(p, Options{Pressure: mon})
			if mon.Sample(); mon.Level() != min(bc.conns/100, 1) {
				b.Fatalf("level %d", mon.Level())
			}
			r := request("192.0.2.1:1")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				d := l.Admit(ctx, r)
				if !d.Allowed {
					b.Fatalf("refused: %s %s", d.Rule, d.Reason)
				}
				d.Release()
			}
		})
	}
}
