package policy

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// heapInuse returns HeapInuse after two full collections.
func heapInuse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// TestIPv6SubnetFlood: one client cycles through 1,000,000 addresses of a
// single IPv6 /64. The subnet rule stops it, the heap stays under a bound
// set by max_keys, and per-ip keys that hold live slots keep their counts.
//
// The addresses come in as the peer address (RemoteAddr), not through a
// forwarding header: a host with a routed /64 really has 2^64 source
// addresses and needs no header to rotate them, and a header that a trusted
// proxy forwards ends in the same keys (keys.ClientIP.Resolve, covered by
// the spoofing tests in keys and ws); the direct route keeps a million
// evaluations within the time budget under -race.
//
// The clock is a fake one that steps 1 µs per handshake: the million
// handshakes span exactly 1 s, so the subnet bucket (100/s, burst 100) can
// admit at most burst + elapsed*rate = 100 + 100 handshakes of the /64,
// whatever the number of addresses, and admits about that many (less the
// tokens that the victim inside the /64 spent).
//
// Rule order matters for the bound: per-ip comes first, so each refused
// handshake first creates a per-ip bucket (its token is then cancelled):
// the flood pushes a million new keys at the per-ip bucket table, which
// must stay within max_keys 10,000.
//
// Heap bound. A token bucket key costs about 310-360 B of heap when keys
// only arrive (measured: HeapInuse growth over 10,000 and 100,000 distinct
// IPv6 keys through a rate rule, 339 and 309 B per bucket: LRU entry, map
// slot, rate.Limiter, key). Under churn (a full table evicting for every
// new key) the maps keep deleted slots until they rehash, so a table costs
// up to about 2.5 times that: a 10,000-key table measured 3.3 MiB after
// 10,000 keys, 6.1 MiB after 1,000,000 and 8.1 MiB after 3,000,000 and
// 6,000,000 (a plateau, not a leak). So the per-ip table, bounded by
// max_keys = 10,000, holds at most 10,000 * 360 B * 2.5 = 9 MB; the subnet
// rule holds one bucket and one counter; the admitted handshakes (at most
// 200) hold 200 per-ip counters and their decisions, under 100 KB. With
// about 7 MB of slack for the runtime and the test the bound is 16 MiB
// (this test measures about +7 MiB). A table that did not evict would grow
// by about 1,000,000 * 340 B = 324 MiB, twenty times the bound.
func TestIPv6SubnetFlood(t *testing.T) {
	const (
		n         = 1_000_000
		step      = time.Microsecond
		subnetQPS = 100
		burst     = 100
		maxKeys   = 10_000
		heapBound = 16 << 20
	)
	p := mustParse(t, `version: 1
rules:
  - {name: per-ip, key: ip, connections: 5, rate: 10/s, burst: 10, max_keys: 10000}
  - {name: per-64, key: subnet, ipv6_prefix: 64, rate: 100/s, burst: 100, connections: 1000}
`)
	now := t0
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store, Now: fixedClock(&now)})
	ctx := context.Background()

	// Two victims hold live slots before the flood: one in another /64,
	// one inside the flooded /64 (it spends 2 of the subnet's tokens).
	victimOut := netip.MustParseAddr("2001:db8:1:1::1")
	victimIn := netip.MustParseAddr("2001:db8:aaaa:bbbb::1")
	var victims []*Decision
	for _, v := range []struct {
		a netip.Addr
		n int
	}{{victimOut, 3}, {victimIn, 2}} {
		for range v.n {
			d := l.Admit(ctx, request("["+v.a.String()+"]:443"))
			if !d.Allowed {
				t.Fatalf("victim %v refused: %+v", v.a, d)
			}
			victims = append(victims, d)
		}
	}
	checkVictims := func(when string) {
		t.Helper()
		if got := store.count("per-ip", keys.IP(victimOut)); got != 3 {
			t.Fatalf("%s: victim %v holds %d per-ip slots, want 3", when, victimOut, got)
		}
		if got := store.count("per-ip", keys.IP(victimIn)); got != 2 {
			t.Fatalf("%s: victim %v holds %d per-ip slots, want 2", when, victimIn, got)
		}
		if got := store.count("per-64", keys.Subnet(victimOut, 24, 64)); got != 3 {
			t.Fatalf("%s: victim %v's /64 holds %d slots, want 3", when, victimOut, got)
		}
		if st := store.Stats("per-ip"); st.Buckets > maxKeys {
			t.Fatalf("%s: per-ip tracks %d buckets, max_keys %d", when, st.Buckets, maxKeys)
		}
	}
	checkVictims("before the flood")

	before := heapInuse()
	start := time.Now()
	base := victimIn.As16()
	r := request("")
	buf := make([]byte, 0, 64)
	var (
		admitted []*Decision
		refused  = map[string]int{}
	)
	for i := range n {
		// Distinct interface identifiers, spread over the 64 bits; the
		// top bit keeps them away from the victim's ::1.
		a := base
		x := uint64(i)*0x9e3779b97f4a7c15 | 1<<63
		for j := range 8 {
			a[8+j] = byte(x >> (56 - 8*j))
		}
		buf = append(buf[:0], '[')
		buf = netip.AddrFrom16(a).AppendTo(buf)
		buf = append(buf, "]:443"...)
		r.RemoteAddr = string(buf)
		d := l.Admit(ctx, r)
		if d.Allowed {
			admitted = append(admitted, d)
		} else {
			refused[d.Rule+"/"+d.Reason.String()]++
		}
		now = now.Add(step)
		if i%50_000 == 0 {
			checkVictims("during the flood")
		}
	}
	took := time.Since(start)
	checkVictims("after the flood")
	after := heapInuse()
	growth := after - before

	elapsed := now.Sub(t0)
	bound := burst + int(elapsed.Seconds()*subnetQPS)
	st := store.Stats("per-ip")
	t.Logf("%d handshakes from one /64 over %v of fake time (%v real): %d admitted (bound %d), refused %v; per-ip: %d buckets (max_keys %d), %d evictions, %d keys holding slots; heap in use %+.1f MiB (%.1f -> %.1f MiB, bound %d MiB)",
		n, elapsed, took.Round(time.Millisecond), len(admitted), bound, refused, st.Buckets, maxKeys, st.Evictions, st.Keys,
		float64(growth)/(1<<20), float64(before)/(1<<20), float64(after)/(1<<20), heapBound>>20)

	if len(admitted) > bound {
		t.Errorf("admitted %d handshakes from one /64, want at most burst + elapsed*rate = %d", len(admitted), bound)
	}
	// The 2 victim tokens and rounding aside, the bucket admits what it
	// allows: the flood is throttled, not starved to zero.
	if len(admitted) < bound-4 {
		t.Errorf("admitted %d handshakes, want about %d", len(admitted), bound)
	}
	if got := refused["per-64/rate"]; got != n-len(admitted) {
		t.Errorf("refusals = %v, want all %d by per-64/rate", refused, n-len(admitted))
	}
	if st.Buckets > maxKeys {
		t.Errorf("per-ip buckets = %d, want <= %d", st.Buckets, maxKeys)
	}
	if want := len(admitted) + 2; st.Keys != want {
		t.Errorf("per-ip keys holding slots = %d, want %d (admitted flood addresses and 2 victims)", st.Keys, want)
	}
	if got := store.count("per-64", keys.Subnet(victimIn, 24, 64)); got != len(admitted)+2 {
		t.Errorf("flooded /64 holds %d slots, want %d", got, len(admitted)+2)
	}
	if growth > heapBound {
		t.Errorf("heap grew by %d bytes during the flood, bound %d", growth, heapBound)
	}

	// The victim outside the /64 keeps its exact cap (5): two more, then
	// refused by per-ip.
	now = now.Add(time.Second) // refill its per-ip bucket
	for i := range 2 {
		d := l.Admit(ctx, request("["+victimOut.String()+"]:443"))
		if !d.Allowed {
			t.Fatalf("victim connection %d refused after the flood: %+v", 4+i, d)
		}
		victims = append(victims, d)
	}
	if d := l.Admit(ctx, request("["+victimOut.String()+"]:443")); d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonConnections {
		t.Errorf("victim's sixth connection = %+v, want refused by the per-ip cap", d)
	}

	for _, d := range append(admitted, victims...) {
		d.Release()
	}
	for _, rule := range []string{"per-ip", "per-64"} {
		if st := store.Stats(rule); st.Connections != 0 || st.Keys != 0 {
			t.Errorf("%s after release: %+v, want no slots and no counters", rule, st)
		}
	}
}
