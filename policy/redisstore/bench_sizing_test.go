//go:build linux

package redisstore

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// BenchmarkSizing measures what one connection's admission and release
// cost Redis, by policy size, for the sizing table of
// docs/operations-redis.md: 16 goroutines on a private redis-server, every
// admission a new client (its own key in every per-client rule, so that it
// starts those lease sets and buckets), the last rule of 2 and 4 a global
// cap the instance holds leases in. redis-cpu-µs/op is Redis's main-thread
// CPU time (INFO cpu) per admission+release, network I/O included;
// pairs/s/core is its inverse, the pairs one Redis core can serve.
func BenchmarkSizing(b *testing.B) {
	srv := ownServer(b, "")
	c, _ := newClient(b, srv.addr)
	ctx := context.Background()
	for _, rules := range []int{1, 2, 4} {
		b.Run("rules="+strconv.Itoa(rules), func(b *testing.B) {
			s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour, Timeout: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer dropStore(b, s)
			var next atomic.Int64
			op := func() {
				id := "c" + strconv.FormatInt(next.Add(1), 10)
				claims := make([]policy.Claim, rules)
				for i := range claims {
					k := keys.String(id)
					if rules > 1 && i == rules-1 {
						k = keys.Global()
					}
					claims[i] = policy.Claim{Rule: "r" + strconv.Itoa(i), Key: k, Conns: 1 << 30, Limit: 1e9, Burst: 1 << 30}
				}
				benchOp(b, ctx, s, claims, true)()
			}
			op()
			cpu0 := redisCPU(b, c)
			b.ResetTimer()
			benchParallelism(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					op()
				}
			})
			b.StopTimer()
			us := (redisCPU(b, c) - cpu0).Seconds() * 1e6 / float64(b.N)
			b.ReportMetric(us, "redis-cpu-µs/op")
			b.ReportMetric(1e6/us, "pairs/s/core")
		})
	}
}

// BenchmarkReleaseCost measures what a release costs Redis beside a PING,
// from 16 goroutines on a private redis-server: the leases are admitted
// first (apart from the measurement), then released, and
// redis-cpu-µs/op is Redis's main-thread CPU time per release;
// redis-cpu/ping is that over a PING's in the same run.
func BenchmarkReleaseCost(b *testing.B) {
	srv := ownServer(b, "")
	c, _ := newClient(b, srv.addr)
	ctx := context.Background()
	var ping float64
	measure := func(b *testing.B, setup func(n int) func(i int)) {
		op := setup(b.N)
		var next atomic.Int64
		cpu0 := redisCPU(b, c)
		b.ResetTimer()
		benchParallelism(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				op(int(next.Add(1) - 1))
			}
		})
		b.StopTimer()
		us := (redisCPU(b, c) - cpu0).Seconds() * 1e6 / float64(b.N)
		b.ReportMetric(us, "redis-cpu-µs/op")
		if ping == 0 {
			ping = us
		} else {
			b.ReportMetric(us/ping, "redis-cpu/ping")
		}
	}
	b.Run("ping", func(b *testing.B) {
		ping = 0
		measure(b, func(int) func(int) {
			return func(int) {
				if err := c.Ping(ctx).Err(); err != nil {
					b.Error(err)
				}
			}
		})
	})
	for _, rules := range []int{1, 4} {
		b.Run("rules="+strconv.Itoa(rules), func(b *testing.B) {
			s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour, Timeout: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer dropStore(b, s)
			claims := benchClaims(rules)
			measure(b, func(n int) func(int) {
				ls := make([]policy.Lease, n)
				for i := range ls {
					l, v, err := s.Admit(ctx, time.Now(), claims)
					if err != nil || !v.OK {
						b.Fatalf("Admit = %+v, %v", v, err)
					}
					ls[i] = l
				}
				return func(i int) {
					if err := s.Release(ctx, ls[i], claims); err != nil {
						b.Error(err)
					}
				}
			})
		})
	}
}
