package redisstore

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkScriptCPU measures what the scripts cost Redis itself, apart
// from the network: a private redis-server (never the shared one, whose
// statistics other tests disturb) runs serial admissions, with or without
// their release, and INFO commandstats gives, per operation:
//
//	redis-µs/op        EVALSHA time per operation (the admission's
//	                   usec_per_call for "admit"; admission plus release
//	                   for "admit+release")
//	redis-µs/evalsha   usec_per_call of EVALSHA
//	calls/op           redis.calls made inside the scripts per operation
//
// Every rule has a cap and a bucket that never refuse, as in
// BenchmarkAdmitVsPing. -v logs the per-command breakdown.
func BenchmarkScriptCPU(b *testing.B) {
	srv := ownServer(b, "")
	for _, rules := range []int{1, 4} {
		for _, release := range []bool{false, true} {
			name := "rules=" + strconv.Itoa(rules) + "/admit"
			if release {
				name += "+release"
			}
			b.Run(name, func(b *testing.B) {
				c, _ := newClient(b, srv.addr)
				ctx := context.Background()
				s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour, Timeout: time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer dropStore(b, s)
				op := benchOp(b, ctx, s, benchClaims(rules), release)
				op() // load the script cache
				if err := c.ConfigResetStat(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for range b.N {
					op()
				}
				b.StopTimer()
				st := commandStats(b, c)
				ev := st["evalsha"]
				if ev.calls == 0 {
					b.Fatal("no EVALSHA in commandstats")
				}
				admits := float64(b.N)
				var inner float64
				var parts []string
				for name, cs := range st {
					if name == "evalsha" || name == "config|resetstat" || name == "info" {
						continue
					}
					inner += float64(cs.calls)
					parts = append(parts, name+"="+strconv.FormatFloat(float64(cs.calls)/admits, 'f', 2, 64))
				}
				sort.Strings(parts)
				b.ReportMetric(inner/admits, "calls/op")
				b.ReportMetric(ev.usec/admits, "redis-µs/op")
				b.ReportMetric(ev.usec/float64(ev.calls), "redis-µs/evalsha")
				b.Logf("N=%d per op: %s", b.N, strings.Join(parts, " "))
			})
		}
	}
}

// cmdStat is one command's line of INFO commandstats.
type cmdStat struct {
	calls int64
	usec  float64
}

// commandStats parses INFO commandstats into command name → stats.
func commandStats(b *testing.B, c *redis.Client) map[string]cmdStat {
	b.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	out := make(map[string]cmdStat)
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		var cs cmdStat
		for kv := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				cs.calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				cs.usec, _ = strconv.ParseFloat(v, 64)
			}
		}
		out[name] = cs
	}
	return out
}
