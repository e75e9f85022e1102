package redisstore

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// BenchmarkAdmitVsPing puts the Redis store's admission beside a plain PING
// on the same client, in the same run, serial and with 16 goroutines:
//
//	ping                    one PING (the network floor: one round trip)
//	rules=N/admit           one Admit alone (one round trip)
//	rules=N/admit+release   one Admit plus its Release (two round trips)
//
// Every rule has a cap and a token bucket, as in BenchmarkAdmitRelease.
// "admit" keeps every lease it takes (the store tracks them): the timer
// stops before they are dropped (the store is closed and its keys deleted, which is what a crashed
// instance's leases come to, without waiting for the TTL). The caps are
// high enough never to refuse, and the lease TTL long enough that the
// background refresh does not run during a benchmark. The ping-ratio metric
// is ns/op over the ns/op of the ping sub-benchmark just before it in the
// same run; pings/op is the same per round trip of the operation.
func BenchmarkAdmitVsPing(b *testing.B) {
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
			// run times op, serially or from 16 goroutines, and returns
			// ns/op and round trips/op.
			run := func(b *testing.B, op func()) (nsop, trips float64) {
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
					for i := 0; i < b.N; i++ {
						op()
					}
				}
				b.StopTimer()
				trips = float64(hook.n.Load()) / float64(b.N)
				b.ReportMetric(trips, "roundtrips/op")
				return float64(b.Elapsed().Nanoseconds()) / float64(b.N), trips
			}
			var pingNS float64
			b.Run("ping", func(b *testing.B) {
				pingNS, _ = run(b, func() {
					if err := c.Ping(ctx).Err(); err != nil {
						b.Error(err)
					}
				})
			})
			for _, rules := range []int{1, 4} {
				for _, release := range []bool{false, true} {
					sub := "rules=" + strconv.Itoa(rules) + "/admit"
					if release {
						sub += "+release"
					}
					b.Run(sub, func(b *testing.B) {
						s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour})
						if err != nil {
							b.Fatal(err)
						}
						defer dropStore(b, s)
						op := benchOp(b, ctx, s, benchClaims(rules), release)
						op() // warm the script cache
						nsop, trips := run(b, op)
						if pingNS > 0 {
							b.ReportMetric(nsop/pingNS, "ping-ratio")
							b.ReportMetric(nsop/pingNS/trips, "pings/roundtrip")
						}
						if st := s.Snapshot(); st.Degraded != 0 {
							b.Fatalf("degraded during the benchmark: %+v", st)
						}
					})
				}
			}
		})
	}
}

// dropStore closes s without releasing its leases and deletes its keys.
func dropStore(b *testing.B, s *Store) {
	b.Helper()
	_ = s.Close()
	ctx := context.Background()
	iter := s.client.Scan(ctx, 0, s.prefix+"*", 1000).Iterator()
	var ks []string
	for iter.Next(ctx) {
		ks = append(ks, iter.Val())
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	if len(ks) > 0 {
		if err := s.client.Del(ctx, ks...).Err(); err != nil {
			b.Fatal(err)
		}
	}
}
