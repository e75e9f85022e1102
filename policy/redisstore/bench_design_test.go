//go:build linux

package redisstore

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkRedisDesigns puts the store's admission beside prototypes of
// other designs of its Redis state, and beside PING, on a private
// redis-server in one run (issue 17: choose the design by measurement;
// the figures are in docs/design.md). Every admission is 4 rules, each
// with a cap and a bucket that never refuse, on one hot key per rule, as in
// BenchmarkScriptCPU. The prototypes are measurements, not the store: they
// check and commit as the store does (epoch, sequence, retry detection,
// caps and buckets, all or nothing) but have no refresh, recovery or
// crash cleanup, whose costs docs/design.md estimates apart.
//
//	ping            one PING
//	today           Store.Admit (and Store.Release): a ZSET member per
//	                connection (and, since issue 17 item 2, an instance
//	                hash per set) and a STRING bucket per rule
//	counts          one HASH per rule key holding the key's count, this
//	                instance's count, the bucket and this instance's last
//	                admission id: HMGET and HSET per rule
//	counts-loaded   counts with the limits compiled into the script (the
//	                call sends a rule index, not three numbers, per claim)
//	counts-batch8   counts-loaded deciding 8 admissions per call (what
//	                coalescing concurrent admissions would give)
//
// Serially and from 16 goroutines. Reported per admission (per
// operation for "+release"): redis-cpu-µs/op,
// Redis's main-thread CPU time (INFO cpu), which counts the network I/O a
// PING also costs; redis-cpu/ping, that over a PING's in the same run;
// script-µs/op, the scripts' usec in INFO commandstats; client-cpu-µs/op,
// this process's CPU time (getrusage) per op; and allocs/op.
func BenchmarkRedisDesigns(b *testing.B) {
	srv := ownServer(b, "")
	for _, parallel := range []bool{false, true} {
		name := "serial"
		if parallel {
			name = "parallel=16"
		}
		b.Run(name, func(b *testing.B) { benchDesigns(b, srv.addr, parallel) })
	}
}

func benchDesigns(b *testing.B, addr string, parallel bool) {
	c, _ := newClient(b, addr)
	ctx := context.Background()
	var pingCPU float64
	run := func(b *testing.B, per int, op func()) {
		op() // load scripts, create keys
		if err := c.ConfigResetStat(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		cpu0, self0 := redisCPU(b, c), selfCPU()
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			benchParallelism(b)
			var ops atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if ops.Add(1)%int64(per) == 0 {
						op()
					}
				}
			})
		} else {
			for i := 0; i < b.N; i += per {
				op()
			}
		}
		b.StopTimer()
		cpu1, self1 := redisCPU(b, c), selfCPU()
		n := float64(b.N)
		rc := (cpu1 - cpu0).Seconds() * 1e6 / n
		b.ReportMetric(rc, "redis-cpu-µs/op")
		b.ReportMetric((self1-self0).Seconds()*1e6/n, "client-cpu-µs/op")
		var script float64
		for name, cs := range commandStats(b, c) {
			if name == "evalsha" || name == "eval" {
				script += cs.usec
			}
		}
		b.ReportMetric(script/n, "script-µs/op")
		if pingCPU > 0 {
			b.ReportMetric(rc/pingCPU, "redis-cpu/ping")
		} else {
			pingCPU = rc
		}
	}
	b.Run("ping", func(b *testing.B) {
		pingCPU = 0
		run(b, 1, func() {
			if err := c.Ping(ctx).Err(); err != nil {
				b.Error(err)
			}
		})
	})
	for _, release := range []bool{false, true} {
		suffix := ""
		if release {
			suffix = "+release"
		}
		b.Run("today/admit"+suffix, func(b *testing.B) {
			s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour, Timeout: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer dropStore(b, s)
			run(b, 1, benchOp(b, ctx, s, benchClaims(4), release))
		})
		b.Run("counts/admit"+suffix, func(b *testing.B) {
			p := newProto(b, c, false)
			run(b, 1, func() { p.admit(ctx, 1, release) })
		})
	}
	b.Run("counts-loaded/admit", func(b *testing.B) {
		p := newProto(b, c, true)
		run(b, 1, func() { p.admit(ctx, 1, false) })
	})
	b.Run("counts-batch8/admit", func(b *testing.B) {
		p := newProto(b, c, true)
		run(b, 8, func() { p.admit(ctx, 8, false) })
	})
}

// proto is a prototype of the "counts" design for one 4-rule policy.
type proto struct {
	b       *testing.B
	c       *redis.Client
	prefix  string
	loaded  bool
	admit1  *redis.Script
	release *redis.Script
	id      atomic.Int64
}

// protoRules are the prototype's rules, with BenchmarkScriptCPU's limits:
// a cap and a bucket (tokens per ms, burst) that never refuse.
var protoRules = []string{"per-ip", "per-subnet", "per-user", "everyone"}

const protoCap, protoRate, protoBurst = 1 << 30, 1e6, 1 << 30

func newProto(b *testing.B, c *redis.Client, loaded bool) *proto {
	p := &proto{b: b, c: c, prefix: uniquePrefix(b), loaded: loaded}
	src := protoAdmitSrc
	if loaded {
		// The limits become constants of the script: one script per policy.
		var lim strings.Builder
		lim.WriteString("local L = {")
		for range protoRules {
			lim.WriteString("{" + strconv.Itoa(protoCap) + "," + strconv.FormatFloat(protoRate/1000, 'g', -1, 64) + "," + strconv.Itoa(protoBurst) + "},")
		}
		lim.WriteString("}\n")
		src = lim.String() + strings.Replace(src, protoLimitsFromArgs, protoLimitsLoaded, 1)
	}
	p.admit1 = redis.NewScript(src)
	p.release = redis.NewScript(protoReleaseSrc)
	if err := c.Set(context.Background(), p.prefix+"epoch", "e1", 0).Err(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ks, _ := c.Keys(context.Background(), p.prefix+"*").Result()
		if len(ks) > 0 {
			c.Del(context.Background(), ks...)
		}
	})
	return p
}

// admit decides k admissions in one call (and releases them in another
// when release is set), building keys and arguments as a store would.
func (p *proto) admit(ctx context.Context, k int, release bool) {
	keys := make([]string, 0, 2+k*len(protoRules))
	keys = append(keys, p.prefix+"epoch", p.prefix+"seq")
	args := make([]any, 0, 4+k*(1+3*len(protoRules)))
	args = append(args, "inst1", "e1", 0, k)
	for range k {
		args = append(args, strconv.FormatInt(p.id.Add(1), 10))
		for i, r := range protoRules {
			keys = append(keys, p.prefix+r+":{bench}")
			if p.loaded {
				args = append(args, i+1)
			} else {
				args = append(args, protoCap, protoRate/1000, protoBurst)
			}
		}
	}
	res, err := p.admit1.Run(ctx, p.c, keys, args...).Int64Slice()
	if err != nil || len(res) != k || res[0] != 1 {
		p.b.Errorf("prototype admit: %v %v", res, err)
		return
	}
	if release {
		if err := p.release.Run(ctx, p.c, keys[2:], "inst1").Err(); err != nil {
			p.b.Error(err)
		}
	}
}

// protoLimitsFromArgs reads claim i's limits from ARGV; protoLimitsLoaded
// from the table L compiled into the script, indexed by rule.
const (
	protoLimitsFromArgs = `local cap, rate, burst = tonumber(ARGV[a]), tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
    a = a + 3`
	protoLimitsLoaded = `local l = L[tonumber(ARGV[a])]
    local cap, rate, burst = l[1], l[2], l[3]
    a = a + 1`
)

// protoAdmitSrc: KEYS[1] epoch, KEYS[2] sequence, then 4 hashes per
// admission. ARGV: instance, epoch, highest sequence seen, k; then per
// admission its id and per claim its limits. A hash holds c (the key's
// count), the instance's count under the instance's name, t and ts (the
// bucket), and a:<instance>, the instance's last admission id (retry
// detection, on the first claim). Returns one result per admission: 1
// admitted (or a retry of one that was), 0 refused.
const protoAdmitSrc = `
local ev = redis.call('GET', KEYS[1])
if ev ~= ARGV[2] then return {2} end
local seq = redis.call('INCR', KEYS[2])
if seq <= tonumber(ARGV[3]) then return {2} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local inst, k = ARGV[1], tonumber(ARGV[4])
local last = 'a:' .. inst
local n = (#KEYS - 2) / k
local out, a, kb = {}, 5, 2
for j = 1, k do
  local id = ARGV[a]
  a = a + 1
  local st, ok = {}, 1
  for i = 1, n do
    ` + protoLimitsFromArgs + `
    local key = KEYS[kb + i]
    local v = redis.call('HMGET', key, 'c', inst, 't', 'ts', last)
    if i == 1 and v[5] == id then ok = 2 break end
    local c = tonumber(v[1]) or 0
    if cap > 0 and c >= cap then ok = 0 break end
    local tk = burst
    if rate > 0 and v[3] then
      local el = now - tonumber(v[4])
      if el < 0 then el = 0 end
      tk = math.min(burst, tonumber(v[3]) + el * rate)
    end
    if rate > 0 and tk < 1 then ok = 0 break end
    st[i] = {c, tonumber(v[2]) or 0, tk}
  end
  if ok == 1 then
    for i = 1, n do
      local s = st[i]
      if i == 1 then
        redis.call('HSET', KEYS[kb + i], 'c', s[1] + 1, inst, s[2] + 1, 't', string.format('%.17g', s[3] - 1), 'ts', now, last, id)
      else
        redis.call('HSET', KEYS[kb + i], 'c', s[1] + 1, inst, s[2] + 1, 't', string.format('%.17g', s[3] - 1), 'ts', now)
      end
    end
  end
  out[j] = ok == 0 and 0 or 1
  kb = kb + n
end
return out
`

// protoReleaseSrc gives back one slot of instance ARGV[1] in each key.
const protoReleaseSrc = `
local inst = ARGV[1]
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'c', -1)
  redis.call('HINCRBY', KEYS[i], inst, -1)
end
return 0
`

// redisCPU is Redis's main-thread CPU time (user + system).
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	b.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys_main_thread" || k == "used_cpu_user_main_thread") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu %s: %v", k, err)
			}
			sum += f
		}
	}
	if sum == 0 {
		b.Fatal("INFO cpu has no main-thread figures (Redis 6.2 or later needed)")
	}
	return time.Duration(sum * float64(time.Second))
}

// selfCPU is this process's CPU time (user + system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
