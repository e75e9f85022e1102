//go:build linux

package redisstore

import (
	"context"
	"os"
	"strconv"
	"sync"
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

// BenchmarkKeepAliveFleet measures the keep-alive of 1,000,000 live
// connections across 100 instances (issue 17): 100 Stores on one private
// redis-server admit 10,000 leases each (16 goroutines), under a global
// cap or under a per-ip cap with every connection from its own address;
// then every instance syncs once, one after another, and
// redis-cpu-ms/round is Redis's main-thread CPU for that round of 100
// syncs (INFO cpu), core-%@10s that as a share of one core when
// refresh_interval is 10s. Run it with -test.benchtime 1x: the set-up
// takes about a minute per policy. WSLIMIT_FLEET_CONNS scales the
// connections down (for a quick look).
func BenchmarkKeepAliveFleet(b *testing.B) {
	const instances = 100
	conns := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("WSLIMIT_FLEET_CONNS")); err == nil && v > 0 {
		conns = v
	}
	per := conns / instances
	for _, perIP := range []bool{false, true} {
		name := "global"
		if perIP {
			name = "per-ip"
		}
		b.Run(name+"/conns="+strconv.Itoa(per*instances), func(b *testing.B) {
			srv := ownServer(b, "")
			c, _ := newClient(b, srv.addr)
			ctx := context.Background()
			prefix := uniquePrefix(b)
			fleet := make([]*Store, instances)
			for i := range fleet {
				s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: prefix, LeaseTTL: time.Hour, Timeout: 5 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = s.Close() }()
				fleet[i] = s
			}
			var next atomic.Int64
			work := make(chan int)
			var wg sync.WaitGroup
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						k := keys.Global()
						if perIP {
							k = keys.String("c" + strconv.FormatInt(next.Add(1), 10))
						}
						claims := []policy.Claim{{Rule: "r", Key: k, Conns: 1 << 30}}
						if _, v, err := fleet[i%instances].Admit(ctx, time.Now(), claims); err != nil || !v.OK {
							b.Errorf("Admit = %+v, %v", v, err)
							return
						}
					}
				}()
			}
			for i := range per * instances {
				work <- i
			}
			close(work)
			wg.Wait()
			if b.Failed() {
				return
			}
			b.ResetTimer()
			var cpu time.Duration
			for range b.N {
				cpu0 := redisCPU(b, c)
				for _, s := range fleet {
					if err := s.syncOnce(ctx, syncRefresh); err != nil {
						b.Fatal(err)
					}
				}
				cpu += redisCPU(b, c) - cpu0
			}
			ms := cpu.Seconds() * 1e3 / float64(b.N)
			b.ReportMetric(ms, "redis-cpu-ms/round")
			b.ReportMetric(ms/10e3*100, "core-%@10s")
		})
	}
}
