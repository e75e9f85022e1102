package policy

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func mustParse(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func request(remote string, hdr ...string) *http.Request {
	r := &http.Request{Method: http.MethodGet, RemoteAddr: remote, Header: http.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func fixedClock(t *time.Time) func() time.Time { return func() time.Time { return *t } }

// TestSpoofing: forwarding headers count only from trusted peers, and then
// the right-most untrusted address is the key.
func TestSpoofing(t *testing.T) {
	p := mustParse(t, `version: 1
client_ip:
  trusted_proxies: [10.0.0.0/8, "2001:db8:ffff::/48"]
rules:
  - {name: per-ip, key: ip, connections: 100}
`)
	tests := []struct {
		name   string
		remote string
		hdr    []string
		want   string
	}{
		{"untrusted peer, forged XFF", "203.0.113.7:5555", []string{"X-Forwarded-For", "1.2.3.4"}, "203.0.113.7"},
		{"untrusted peer, forged Forwarded", "203.0.113.7:5555", []string{"Forwarded", "for=1.2.3.4"}, "203.0.113.7"},
		{"trusted proxy", "10.0.0.1:80", []string{"X-Forwarded-For", "198.51.100.9"}, "198.51.100.9"},
		{"client-written left entries ignored", "10.0.0.1:80", []string{"X-Forwarded-For", "6.6.6.6, 198.51.100.9"}, "198.51.100.9"},
		{"two trusted hops", "10.0.0.1:80", []string{"X-Forwarded-For", "6.6.6.6, 198.51.100.9, 10.2.3.4"}, "198.51.100.9"},
		{"mapped peer folded", "[::ffff:203.0.113.8]:1", nil, "203.0.113.8"},
		{"IPv6 peer via trusted IPv6 proxy", "[2001:db8:ffff::1]:443", []string{"X-Forwarded-For", "2001:db8:1:2::5"}, "2001:db8:1:2::5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := NewMemoryStore()
			l := NewLimiter(p, Options{Store: store})
			d := l.Admit(context.Background(), request(tt.remote, tt.hdr...))
			if !d.Allowed {
				t.Fatalf("refused: %+v", d)
			}
			defer d.Release()
			want := netip.MustParseAddr(tt.want)
			if d.ClientIP != want {
				t.Errorf("client IP = %v, want %v", d.ClientIP, want)
			}
			if got := store.count("per-ip", keys.IP(want)); got != 1 {
				t.Errorf("slot counted under %v: %d, want 1", want, got)
			}
		})
	}
}

// TestSubnetAggregation: one IPv6 /64 is one key; a /64 cap stops a client
// rotating addresses inside its prefix.
func TestSubnetAggregation(t *testing.T) {
	p := mustParse(t, `version: 1
rules:
  - {name: per-64, key: subnet, ipv6_prefix: 64, ipv4_prefix: 24, connections: 3}
`)
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store})
	var held []*Decision
	for i, addr := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:a:b:c:d"} {
		d := l.Admit(context.Background(), request("["+addr+"]:1000"))
		if !d.Allowed {
			t.Fatalf("address %d refused", i)
		}
		held = append(held, d)
	}
	if d := l.Admit(context.Background(), request("[2001:db8:1:2:1::1]:1000")); d.Allowed || d.Rule != "per-64" || d.Reason != ReasonConnections {
		t.Errorf("fourth address in the /64 = %+v, want refused by per-64", d)
	}
	if d := l.Admit(context.Background(), request("[2001:db8:1:3::1]:1000")); !d.Allowed {
		t.Errorf("another /64 refused")
	} else {
		d.Release()
	}
	if got := store.count("per-64", keys.Subnet(netip.MustParseAddr("2001:db8:1:2::77"), 24, 64)); got != 3 {
		t.Errorf("/64 count = %d, want 3", got)
	}
	for _, d := range held {
		d.Release()
	}
	if st := store.Stats("per-64"); st.Connections != 0 || st.Keys != 0 {
		t.Errorf("after release: %+v", st)
	}
}

// TestKeyFlood: 1,000,000 distinct client addresses through a rule whose
// bucket table holds 10,000 keep the table at or under 10,000, and a key
// holding slots keeps its count throughout.
func TestKeyFlood(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	p := mustParse(t, `version: 1
rules:
  - {name: per-ip, key: ip, connections: 5, rate: 1/m, burst: 5, max_keys: 10000}
`)
	now := t0
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store, Now: fixedClock(&now)})
	victim := request("192.0.2.1:1")
	var held []*Decision
	for i := 0; i < 3; i++ {
		d := l.Admit(context.Background(), victim)
		if !d.Allowed {
			t.Fatal("victim refused")
		}
		held = append(held, d)
	}
	victimKey := keys.IP(netip.MustParseAddr("192.0.2.1"))
	r := request("")
	for i := 0; i < n; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if i >= 1<<24 {
			t.Fatal("address space exhausted")
		}
		r.RemoteAddr = a.String() + ":9"
		d := l.Admit(context.Background(), r)
		if !d.Allowed {
			t.Fatalf("flood key %d refused: %+v (evict mode must admit new keys)", i, d)
		}
		d.Release()
		if i%10000 == 0 {
			st := store.Stats("per-ip")
			if st.Buckets > 10000 {
				t.Fatalf("after %d keys: %d buckets, bound 10000", i, st.Buckets)
			}
			if got := store.count("per-ip", victimKey); got != 3 {
				t.Fatalf("after %d keys: victim holds %d slots, want 3", i, got)
			}
		}
	}
	st := store.Stats("per-ip")
	if st.Buckets > 10000 || st.Keys != 1 || st.Connections != 3 {
		t.Errorf("after flood: %+v, want <=10000 buckets, 1 key holding 3 slots", st)
	}
	if st.Evictions == 0 {
		t.Errorf("no evictions recorded during a flood")
	}
	// The victim's cap still holds exactly: 2 more, then refused.
	for i := 0; i < 2; i++ {
		now = now.Add(time.Minute) // a token per admission
		d := l.Admit(context.Background(), victim)
		if !d.Allowed {
			t.Fatalf("victim slot %d refused: %+v", 4+i, d)
		}
		held = append(held, d)
	}
	now = now.Add(time.Minute)
	if d := l.Admit(context.Background(), victim); d.Allowed || d.Reason != ReasonConnections {
		t.Errorf("sixth victim connection = %+v, want refused by cap", d)
	}
	for _, d := range held {
		d.Release()
	}
}

func TestRefuseWhenFull(t *testing.T) {
	p := mustParse(t, `version: 1
state: {on_full: refuse}
rules:
  - {name: per-ip, key: ip, rate: 1/h, burst: 2, max_keys: 4}
`)
	now := t0
	l := NewLimiter(p, Options{Now: fixedClock(&now)})
	for i := 0; i < 4; i++ {
		if d := l.Admit(context.Background(), request(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}).String()+":1")); !d.Allowed {
			t.Fatalf("key %d refused before the table is full", i)
		}
	}
	d := l.Admit(context.Background(), request("10.0.0.99:1"))
	if d.Allowed || d.Reason != ReasonTableFull || d.Status() != http.StatusTooManyRequests {
		t.Errorf("new key with full table = %+v, want table_full 429", d)
	}
	if d := l.Admit(context.Background(), request("10.0.0.1:1")); !d.Allowed {
		t.Errorf("known key refused in refuse mode: %+v", d)
	}
	now = now.Add(2 * time.Hour) // every bucket refills: equivalent to none
	if d := l.Admit(context.Background(), request("10.0.0.99:1")); !d.Allowed {
		t.Errorf("new key refused after the table's buckets refilled: %+v", d)
	}
}

func TestExemptAndDryRun(t *testing.T) {
	p := mustParse(t, `version: 1
exempt: [192.0.2.0/24]
mode: dry_run
rules:
  - {name: one, key: global, connections: 1}
`)
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store})
	ex := l.Admit(context.Background(), request("192.0.2.5:1"))
	if !ex.Allowed || !ex.Exempt || ex.Holds() {
		t.Errorf("exempt = %+v", ex)
	}
	a := l.Admit(context.Background(), request("198.51.100.1:1"))
	if !a.Allowed || a.WouldReject || !a.Holds() {
		t.Fatalf("first = %+v", a)
	}
	b := l.Admit(context.Background(), request("198.51.100.2:1"))
	if !b.Allowed || !b.WouldReject || b.Rule != "one" || b.Reason != ReasonConnections || b.Holds() {
		t.Errorf("dry-run refusal = %+v, want allowed, would reject by one, holding nothing", b)
	}
	if got := store.Stats("one").Connections; got != 1 {
		t.Errorf("slots = %d, want 1 (dry run counts what it admits)", got)
	}
	a.Release()
	if got := store.Stats("one").Connections; got != 0 {
		t.Errorf("slots after release = %d", got)
	}
}

func TestHeaderKeyOnMissing(t *testing.T) {
	p := mustParse(t, `version: 1
rules:
  - {name: tenant, key: "header:X-Tenant", connections: 1, on_missing: reject}
  - {name: app, key: "header:X-App", connections: 1}
`)
	l := NewLimiter(p, Options{})
	d := l.Admit(context.Background(), request("192.0.2.1:1"))
	if d.Allowed || d.Reason != ReasonMissing || d.Status() != http.StatusUnauthorized || d.Rule != "tenant" {
		t.Errorf("missing header with on_missing reject = %+v", d)
	}
	d1 := l.Admit(context.Background(), request("192.0.2.1:1", "X-Tenant", "acme"))
	if !d1.Allowed {
		t.Fatalf("tenant acme refused: %+v", d1)
	}
	d2 := l.Admit(context.Background(), request("192.0.2.2:1", "X-Tenant", "acme"))
	if d2.Allowed || d2.Rule != "tenant" {
		t.Errorf("second acme connection = %+v, want refused", d2)
	}
	d3 := l.Admit(context.Background(), request("192.0.2.1:1", "X-Tenant", "globex"))
	if !d3.Allowed {
		t.Errorf("globex refused (app rule skipped when header absent): %+v", d3)
	}
}

// TestReleaseExactlyOnceConcurrent: many goroutines releasing one decision
// free exactly one slot.
func TestReleaseExactlyOnceConcurrent(t *testing.T) {
	p := mustParse(t, "version: 1\nrules:\n  - {name: g, key: global, connections: 10}\n")
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store})
	a := l.Admit(context.Background(), request("192.0.2.1:1"))
	b := l.Admit(context.Background(), request("192.0.2.1:1"))
	var wg sync.WaitGroup
	var released atomic.Int32
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a.Release() {
				released.Add(1)
			}
		}()
	}
	wg.Wait()
	if released.Load() != 1 {
		t.Errorf("Release reported success %d times, want 1", released.Load())
	}
	if got := store.Stats("g").Connections; got != 1 {
		t.Errorf("slots = %d, want 1 (b's slot intact)", got)
	}
	b.Release()
}

// TestConcurrentAllOrNothing: two rules under racing admissions; the
// per-key rule's counts never exceed what the global cap admitted.
func TestConcurrentAllOrNothing(t *testing.T) {
	p := mustParse(t, `version: 1
rules:
  - {name: per-ip, key: ip, connections: 1000}
  - {name: all, key: global, connections: 7}
`)
	store := NewMemoryStore()
	l := NewLimiter(p, Options{Store: store})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var admitted []*Decision
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d := l.Admit(context.Background(), request(netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 4)}).String()+":1"))
			if d.Allowed {
				mu.Lock()
				admitted = append(admitted, d)
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if len(admitted) != 7 {
		t.Errorf("admitted %d, want 7", len(admitted))
	}
	if got := store.Stats("per-ip").Connections; got != 7 {
		t.Errorf("per-ip slots = %d, want 7: refused handshakes must hold nothing", got)
	}
	for _, d := range admitted {
		d.Release()
	}
	if got := store.Stats("per-ip").Connections + store.Stats("all").Connections; got != 0 {
		t.Errorf("slots after release = %d", got)
	}
}

// TestReloadKeepsCounts: a new policy keeps counts by rule name and applies
// a changed cap to new handshakes.
func TestReloadKeepsCounts(t *testing.T) {
	store := NewMemoryStore()
	l := NewLimiter(mustParse(t, "version: 1\nrules:\n  - {name: g, key: global, connections: 3}\n"), Options{Store: store})
	var held []*Decision
	for i := 0; i < 3; i++ {
		held = append(held, l.Admit(context.Background(), request("192.0.2.1:1")))
	}
	l.SetPolicy(mustParse(t, "version: 1\nrules:\n  - {name: g, key: global, connections: 2}\n"))
	if d := l.Admit(context.Background(), request("192.0.2.1:1")); d.Allowed {
		t.Error("lowered cap admitted a new handshake over it")
	}
	held[0].Release()
	held[1].Release()
	if d := l.Admit(context.Background(), request("192.0.2.1:1")); !d.Allowed {
		t.Error("refused with 1 of 2 slots held")
	} else {
		d.Release()
	}
	held[2].Release()
	if got := store.Stats("g").Connections; got != 0 {
		t.Errorf("slots = %d", got)
	}
}

// TestDecisionProtocols: a decision carries the request's subprotocol offer
// without token entries whenever the policy takes tokens from the
// subprotocol, also for an exempt client and a refusal (close mode upgrades
// refused handshakes), so that ws never hands the upgrader a token.
func TestDecisionProtocols(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_HS256", "test secret: 32 bytes or more, HS256 needs them")
	p := mustParse(t, `version: 1
identity:
  jwt: {from: [subprotocol], algorithms: [HS256], secret_env: WSLIMIT_TEST_HS256}
exempt: [192.0.2.9]
rules:
  - {name: per-user, key: jwt, on_missing: reject, connections: 1}
`)
	l := NewLimiter(p, Options{Now: fixedClock(&t0)})
	for _, tt := range []struct {
		name, remote, offer string
		want                []string
	}{
		{"token and app protocol", "192.0.2.1:1", "chat, bearer.x", []string{"chat"}},
		{"token only", "192.0.2.1:1", "bearer.x", []string{}},
		{"no token", "192.0.2.1:1", "chat", nil},
		{"exempt client", "192.0.2.9:1", "chat, bearer.x", []string{"chat"}},
	} {
		d := l.Admit(context.Background(), request(tt.remote, "Sec-WebSocket-Protocol", tt.offer))
		d.Release()
		if (d.Protocols == nil) != (tt.want == nil) || strings.Join(d.Protocols, "|") != strings.Join(tt.want, "|") {
			t.Errorf("%s: Protocols = %#v, want %#v", tt.name, d.Protocols, tt.want)
		}
	}
	plain := NewLimiter(mustParse(t, "version: 1\nrules:\n  - {name: a, key: ip, connections: 1}\n"), Options{})
	if d := plain.Admit(context.Background(), request("192.0.2.1:1", "Sec-WebSocket-Protocol", "chat, bearer.x")); d.Protocols != nil {
		t.Errorf("without identity.jwt: Protocols = %#v, want nil", d.Protocols)
	}
}
