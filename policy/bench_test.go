package policy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/wslimit/wslimit/internal/handoff"
	"golang.org/x/time/rate"
)

// Decision-path benchmarks: Limiter.Admit plus Decision.Release over a pool
// of benchPool client addresses, clock fixed, limits that never refuse.
// Each iteration draws an address at random (a fixed-seed generator per
// goroutine) and presents it on a request that goroutine reuses: a server
// handles a request whose memory it has just written, while clients arrive
// in no particular order. (Sweeping the pool in a fixed order instead would
// let the baseline's per-key objects, allocated in that same order on the
// first sweep, stream through the prefetcher; giving each address its own
// request object would add the benchmark's own cache miss to every
// figure.) Each policy also runs a baseline written
// here, the naive implementation of the same limits (x/time/rate limiters
// in a map under one mutex, map[string]int slot counters under the same
// mutex), on the same pool, so that every figure has a ratio measured in
// the same run:
//
//	1rule        per-IP token bucket
//	3rules       per-IP cap + bucket, per-subnet (/24) cap, global cap
//	3rules+jwt   the same plus a per-user (JWT subject) cap, the token
//	             (HS256) served from the verified-token cache

const benchPool = 100_000

const bench1 = `version: 1
rules:
  - {name: per-ip, key: ip, rate: 1000000/s, burst: 1000000}
`

const bench3 = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 100000}
  - {name: everyone, key: global, connections: 100000000}
`

// bench3JWT is bench3 plus a per-user rule; %s is the verifier's key line.
const bench3JWT = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    %s
    issuer: https://auth.bench
    audience: chat
    cache_size: 1024
rules:
  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 100000}
  - {name: everyone, key: global, connections: 100000000}
  - {name: per-user, key: jwt, connections: 1000}
`

// benchUsers is how many distinct users the 3rules+jwt pool cycles
// through: fewer than the token cache holds, so every lookup is a hit.
const benchUsers = 512

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

// naive is the baseline: the same limits as the policy benchmarked beside
// it, kept the obvious way.
type naive struct {
	mu       sync.Mutex
	limiters map[string]*rate.Limiter // per client IP
	conns    map[string]int           // slots per "ip:…", "net:…", "user:…"
	global   int
	tokens   map[string]string // verified token -> subject (a cache hit)
	caps     bool              // the 3-rule limits
	now      time.Time
}

func newNaive(caps bool, tokens map[string]string) *naive {
	return &naive{limiters: map[string]*rate.Limiter{}, conns: map[string]int{}, caps: caps, tokens: tokens, now: time.Now()}
}

// admit applies the limits to r all or nothing and returns the slot keys
// to release.
func (n *naive) admit(r *http.Request) (ok bool, held [3]string) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false, held
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, held
	}
	var subnet, user string
	if n.caps {
		p, _ := ip.Prefix(24)
		subnet = "net:" + p.String()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tokens != nil {
		const bearer = "Bearer "
		if a := r.Header.Get("Authorization"); len(a) > len(bearer) {
			user = n.tokens[a[len(bearer):]]
		}
		if user == "" {
			return false, held
		}
		user = "user:" + user
	}
	if n.caps {
		if n.conns[host] >= 1000 || n.conns[subnet] >= 100000 || n.global >= 100000000 || user != "" && n.conns[user] >= 1000 {
			return false, held
		}
	}
	lim := n.limiters[host]
	if lim == nil {
		lim = rate.NewLimiter(1000000, 1000000)
		n.limiters[host] = lim
	}
	if !lim.AllowN(n.now, 1) {
		return false, held
	}
	if n.caps {
		n.conns[host]++
		n.conns[subnet]++
		n.global++
		held = [3]string{host, subnet, user}
		if user != "" {
			n.conns[user]++
		}
	}
	return true, held
}

func (n *naive) release(held [3]string) {
	if held[0] == "" {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range held {
		if k == "" {
			continue
		}
		if n.conns[k]--; n.conns[k] <= 0 {
			delete(n.conns, k)
		}
	}
	n.global--
}

// addrPool is benchPool client addresses ("10.x.y.z:4000", address i
// having x.y.z = i in base 256) and, for a JWT policy, the tokens of
// benchUsers users.
type addrPool struct {
	tokens []string // nil: no Authorization header
}

func newAddrPool(tokens []string) *addrPool { return &addrPool{tokens: tokens} }

// drawer hands one goroutine its requests: a reused request per user (one
// when there are no tokens), from a random address each time. The address
// is formatted afresh for each request, as net/http makes a new
// connection's RemoteAddr: a server reads an address it has just written,
// in cache, never a cold one. (Drawing the string from a pool of 100,000
// stored ones instead charged every figure, ours and the baseline's alike,
// a cache miss no server pays: ~50 ns.)
type drawer struct {
	p    *addrPool
	reqs []*http.Request
	x    uint64 // xorshift state
	buf  [24]byte
}

func (p *addrPool) drawer(seed uint64) *drawer {
	d := &drawer{p: p, x: seed*0x9e3779b97f4a7c15 | 1}
	n := max(1, len(p.tokens))
	for i := 0; i < n; i++ {
		r := &http.Request{Method: http.MethodGet, Header: http.Header{}}
		if p.tokens != nil {
			r.Header.Set("Authorization", "Bearer "+p.tokens[i])
		}
		d.reqs = append(d.reqs, r)
	}
	return d
}

// present sets r's RemoteAddr to address i of the pool.
func (d *drawer) present(r *http.Request, i uint64) {
	b := append(d.buf[:0], "10."...)
	b = strconv.AppendUint(b, i>>16&0xff, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, i>>8&0xff, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, i&0xff, 10)
	b = append(b, ":4000"...)
	r.RemoteAddr = string(b)
}

// next returns a request from a random address of the pool (and a random
// user's request, for a JWT pool).
func (d *drawer) next() *http.Request {
	d.x ^= d.x << 13
	d.x ^= d.x >> 7
	d.x ^= d.x << 17
	r := d.reqs[(d.x>>40)%uint64(len(d.reqs))]
	d.present(r, d.x%benchPool)
	return r
}

// warm presents every address once, in order, so that every bucket and
// cached token is in place before the timer starts.
func (p *addrPool) warm(step func(*http.Request)) {
	d := p.drawer(0)
	for i := range uint64(benchPool) {
		r := d.reqs[i%uint64(len(d.reqs))]
		d.present(r, i)
		step(r)
	}
}

// benchCase is one policy, its address pool and its baseline.
type benchCase struct {
	name  string
	doc   string
	pool  *addrPool
	naive func() *naive
}

func benchCases(b *testing.B) []benchCase {
	// The JWT case: benchUsers users' tokens (HS256), over the same
	// addresses.
	b.Setenv("WSLIMIT_BENCH_HS256", "bench secret: 32 bytes or more, HS256 needs them")
	now := time.Now()
	toks := make([]string, benchUsers)
	subjects := make(map[string]string, benchUsers)
	for i := range toks {
		sub := fmt.Sprintf("user-%d", i)
		t, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": sub, "iss": "https://auth.bench", "aud": "chat",
			"iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(),
		}).SignedString([]byte("bench secret: 32 bytes or more, HS256 needs them"))
		if err != nil {
			b.Fatal(err)
		}
		toks[i], subjects[t] = t, sub
	}
	plain, withTokens := newAddrPool(nil), newAddrPool(toks)
	return []benchCase{
		{"1rule", bench1, plain, func() *naive { return newNaive(false, nil) }},
		{"3rules", bench3, plain, func() *naive { return newNaive(true, nil) }},
		{"3rules+jwt", fmt.Sprintf(bench3JWT, "secret_env: WSLIMIT_BENCH_HS256"), withTokens, func() *naive { return newNaive(true, subjects) }},
	}
}

// BenchmarkAdmitRelease measures one admission plus its release, serial
// and from GOMAXPROCS goroutines, for each policy and its baseline.
func BenchmarkAdmitRelease(b *testing.B) {
	ctx := context.Background()
	for _, bc := range benchCases(b) {
		ours := func(b *testing.B) func(*http.Request) {
			l := benchLimiter(b, bc.doc)
			step := func(r *http.Request) {
				d := l.Admit(ctx, r)
				if !d.Allowed {
					b.Fatalf("refused: %s %s", d.Rule, d.Reason)
				}
				d.Release()
			}
			bc.pool.warm(step)
			return step
		}
		base := func(b *testing.B) func(*http.Request) {
			n := bc.naive()
			step := func(r *http.Request) {
				ok, held := n.admit(r)
				if !ok {
					b.Fatal("baseline refused")
				}
				n.release(held)
			}
			bc.pool.warm(step)
			return step
		}
		for _, impl := range []struct {
			name string
			mk   func(*testing.B) func(*http.Request)
		}{{"", ours}, {"baseline/", base}} {
			b.Run(bc.name+"/"+impl.name+"serial", func(b *testing.B) {
				step := impl.mk(b)
				d := bc.pool.drawer(1)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					step(d.next())
				}
			})
			b.Run(bc.name+"/"+impl.name+"parallel", func(b *testing.B) {
				step := impl.mk(b)
				var seeds atomic.Uint64
				before := handoff.RoundTrip(handoff.BenchTurns)
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					d := bc.pool.drawer(seeds.Add(1))
					for pb.Next() {
						step(d.next())
					}
				})
				b.StopTimer()
				reportHandoff(b, before, handoff.RoundTrip(handoff.BenchTurns))
			})
		}
	}
}

// reportHandoff reports the slower of the handoff round trips measured
// before and after a parallel run, as handoff-ns: the parallel figures
// follow it (docs/benchmarks.md, "The machine has two modes").
func reportHandoff(b *testing.B, before, after time.Duration) {
	b.ReportMetric(float64(max(before, after).Nanoseconds()), "handoff-ns")
}

// BenchmarkRelease measures Release alone for a 3-rule admission.
func BenchmarkRelease(b *testing.B) {
	l := benchLimiter(b, bench3)
	rs := pool(benchPool)
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

// BenchmarkMemoryPerConnection measures the heap an in-memory Limiter holds
// per live connection under the 3-rule policy (per-IP cap + bucket, subnet
// cap, global cap), with 1,000,000 connections from distinct addresses and
// max_keys raised to hold all their buckets: the Decision each connection
// keeps (B/conn) and the store alone (store-B/conn: counters and buckets).
// Heap deltas after a GC.
func BenchmarkMemoryPerConnection(b *testing.B) {
	const n = 1_000_000
	doc := `version: 1
state: {max_keys: 1000000}
rules:
  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 100000}
  - {name: everyone, key: global, connections: 100000000}
`
	rs := pool(n)
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var perConn, perStore float64
	for b.Loop() {
		l := benchLimiter(b, doc)
		ds := make([]*Decision, n)
		before := heap()
		for i, r := range rs {
			if ds[i] = l.Admit(ctx, r); !ds[i].Allowed {
				b.Fatal("refused")
			}
		}
		held := heap()
		perConn = float64(held-before) / n
		keep := make([]Claim, 0, 3*n) // what Release needs, without the Decisions
		for _, d := range ds {
			keep = append(keep, d.Claims()...)
		}
		clear(ds)
		store := heap()
		perStore = (float64(store) - float64(before) - float64(cap(keep))*float64(reflect.TypeFor[Claim]().Size())) / n
		for i := 0; i < len(keep); i += 3 {
			if err := l.store.Release(ctx, Lease{}, keep[i:i+3]); err != nil {
				b.Fatal(err)
			}
		}
		runtime.KeepAlive(keep)
	}
	b.ReportMetric(perConn, "B/conn")
	b.ReportMetric(perStore, "store-B/conn")
}
