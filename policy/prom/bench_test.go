package prom_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/prom"
)

// decisions returns real decisions of a three-rule policy: admitted
// (holding three claims), refused by the cap, and exempt.
func decisions(b *testing.B) (admitted, refused, exempt *policy.Decision) {
	b.Helper()
	lim := policy.NewLimiter(mustPolicy(b, `version: 1
exempt: [203.0.113.0/24]
rules:
  - {name: per-ip, key: ip, connections: 1}
  - {name: per-subnet, key: subnet, connections: 100}
  - {name: everyone, key: global, connections: 1000, rate: 1000/s, burst: 1000}
`), policy.Options{})
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.RemoteAddr = "198.51.100.1:1234"
	admitted = lim.Admit(context.Background(), r)
	refused = lim.Admit(context.Background(), r)
	r.RemoteAddr = "203.0.113.1:1234"
	exempt = lim.Admit(context.Background(), r)
	if !admitted.Allowed || len(admitted.Claims()) != 3 || refused.Allowed || !exempt.Exempt {
		b.Fatal("unexpected decisions")
	}
	return admitted, refused, exempt
}

// BenchmarkDecided measures the observer's cost per handshake, on top of
// the limiter's own: Decided (and Released for the admission).
func BenchmarkDecided(b *testing.B) {
	admitted, refused, exempt := decisions(b)
	cases := []struct {
		name    string
		d       *policy.Decision
		release bool
	}{
		{"admitted+released/3rules", admitted, true},
		{"rejected", refused, false},
		{"exempt", exempt, false},
	}
	for _, tc := range cases {
		obs := prom.New(prom.Options{})
		prometheus.NewRegistry().MustRegister(obs)
		obs.Decided(tc.d, time.Microsecond) // create the series
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				obs.Decided(tc.d, 3*time.Microsecond)
				if tc.release {
					obs.Released(tc.d)
				}
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					obs.Decided(tc.d, 3*time.Microsecond)
					if tc.release {
						obs.Released(tc.d)
					}
				}
			})
		})
	}
}
