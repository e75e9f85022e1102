package redisstore

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// The benchmarks measure one admission plus its release through Redis,
// beside a plain PING on the same client for the network floor. The
// roundtrips/op metric counts commands and pipelines seen by a go-redis
// hook: 2 per Admit+Release (one each), 1 per PING.

// benchParallelism makes RunParallel use 16 goroutines whatever GOMAXPROCS.
func benchParallelism(b *testing.B) {
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
}

func BenchmarkAdmitRelease(b *testing.B) {
	addr := sharedAddr(b)
	for _, rules := range []int{1, 4} {
		for _, parallel := range []bool{false, true} {
			name := "rules=" + strconv.Itoa(rules)
			if parallel {
				name += "/parallel=16"
			} else {
				name += "/serial"
			}
			b.Run(name, func(b *testing.B) {
				c, hook := newClient(b, addr)
				// Timeout: not the default 50 ms, so that a loaded machine
				// does not end the benchmark as "degraded".
				s := newStore(b, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), Timeout: time.Second})
				claims := benchClaims(rules)
				ctx := context.Background()
				op := func() {
					l, v, err := s.Admit(ctx, time.Now(), claims)
					if err != nil || !v.OK {
						b.Fatalf("Admit = %+v, %v", v, err)
					}
					if err := s.Release(ctx, l, claims); err != nil {
						b.Fatal(err)
					}
				}
				op() // warm the connection and the script cache
				hook.n.Store(0)
				b.ReportAllocs()
				b.ResetTimer()
				if parallel {
					benchParallelism(b)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							op()
						}
					})
				} else {
					for b.Loop() {
						op()
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(hook.n.Load())/float64(b.N), "roundtrips/op")
				if st := s.Snapshot(); st.Degraded != 0 {
					b.Fatalf("degraded during the benchmark: %+v", st)
				}
			})
		}
	}
}

func BenchmarkPing(b *testing.B) {
	addr := sharedAddr(b)
	for _, parallel := range []bool{false, true} {
		name := "serial"
		if parallel {
			name = "parallel=16"
		}
		b.Run(name, func(b *testing.B) {
			c, hook := newClient(b, addr)
			ctx := context.Background()
			if err := c.Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			hook.n.Store(0)
			b.ReportAllocs()
			b.ResetTimer()
			if parallel {
				benchParallelism(b)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := c.Ping(ctx).Err(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := c.Ping(ctx).Err(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(hook.n.Load())/float64(b.N), "roundtrips/op")
		})
	}
}
