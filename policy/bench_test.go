package policy

import (
	"context"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

const bench3 = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 100000}
  - {name: everyone, key: global, connections: 100000000}
`

const bench1 = `version: 1
rules:
  - {name: per-ip, key: ip, rate: 1000000/s, burst: 1000000}
`

// pool returns n requests from distinct client addresses.
func pool(n int) []*http.Request {
	rs := make([]*http.Request, n)
	for i := range rs {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		rs[i] = &http.Request{Method: http.MethodGet, RemoteAddr: a.String() + ":4000", Header: http.Header{}}
	}
	return rs
}

func benchLimiter(b *testing.B, doc string) *Limiter {
	p, err := Parse([]byte(doc), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	return NewLimiter(p, Options{Now: func() time.Time { return start }})
}

// BenchmarkAdmitRelease measures one admission plus its release over a
// pool of 100,000 client addresses.
func BenchmarkAdmitRelease(b *testing.B) {
	for _, bc := range []struct{ name, doc string }{{"1rule", bench1}, {"3rules", bench3}} {
		rs := pool(100_000)
		b.Run(bc.name+"/serial", func(b *testing.B) {
			l := benchLimiter(b, bc.doc)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d := l.Admit(ctx, rs[i%len(rs)])
				if !d.Allowed {
					b.Fatal("refused")
				}
				d.Release()
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			l := benchLimiter(b, bc.doc)
			ctx := context.Background()
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(7919))
				for pb.Next() {
					d := l.Admit(ctx, rs[i%len(rs)])
					if !d.Allowed {
						b.Fatal("refused")
					}
					d.Release()
					i++
				}
			})
		})
	}
}

// BenchmarkRelease measures Release alone for a 3-rule admission.
func BenchmarkRelease(b *testing.B) {
	l := benchLimiter(b, bench3)
	rs := pool(100_000)
	ctx := context.Background()
	ds := make([]*Decision, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(ds) == 0 {
			b.StopTimer()
			for j := 0; j < cap(ds); j++ {
				ds = append(ds, l.Admit(ctx, rs[(i+j)%len(rs)]))
			}
			b.StartTimer()
		}
		ds[len(ds)-1].Release()
		ds = ds[:len(ds)-1]
	}
	b.StopTimer()
	for _, d := range ds {
		d.Release()
	}
}
