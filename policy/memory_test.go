package policy

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// TestMemoryStoreReleaseRehashes checks that Release frees the right slots
// when the claims it is given did not pass through this store's Admit (a
// copy made before Admit, or claims admitted by another store): a release
// finds a slot by its claim's rule and key alone, and never misses or
// frees another key's slot.
func TestMemoryStoreReleaseRehashes(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(0, 0)
	a := keys.IP(netip.MustParseAddr("192.0.2.1"))
	b := keys.IP(netip.MustParseAddr("192.0.2.2"))
	fresh := func(k keys.Key) []Claim {
		return []Claim{{Rule: "ip", Key: k, Conns: 1}, {Rule: "all", Key: keys.Global(), Conns: 10}}
	}

	s, other := NewMemoryStore(), NewMemoryStore()
	admitted := fresh(a)
	if _, v, err := s.Admit(ctx, now, admitted); err != nil || !v.OK {
		t.Fatalf("admit a: %+v %v", v, err)
	}
	if _, v, err := s.Admit(ctx, now, fresh(b)); err != nil || !v.OK {
		t.Fatalf("admit b: %+v %v", v, err)
	}
	// Claims admitted by another store: the release must still find a.
	foreign := fresh(a)
	if _, v, err := other.Admit(ctx, now, foreign); err != nil || !v.OK {
		t.Fatalf("admit a in the other store: %+v %v", v, err)
	}
	if err := s.Release(ctx, Lease{}, foreign); err != nil {
		t.Fatal(err)
	}
	if n := s.count("ip", a); n != 0 {
		t.Fatalf("a holds %d slots after a release with foreign hashes, want 0", n)
	}
	if n := s.count("ip", b); n != 1 {
		t.Fatalf("b holds %d slots, want 1: a's release must not free b", n)
	}
	if n := s.count("all", keys.Global()); n != 1 {
		t.Fatalf("global holds %d slots, want 1", n)
	}
	// Claims that never passed through any store.
	if err := s.Release(ctx, Lease{}, fresh(b)); err != nil {
		t.Fatal(err)
	}
	if n := s.count("ip", b); n != 0 {
		t.Fatalf("b holds %d slots after a release with unhashed claims, want 0", n)
	}
	// A second release changes nothing: counts never go below zero.
	if err := s.Release(ctx, Lease{}, admitted); err != nil {
		t.Fatal(err)
	}
	if n, g := s.count("ip", a), s.count("all", keys.Global()); n != 0 || g != 0 {
		t.Fatalf("after a repeated release: a %d, global %d; want 0, 0", n, g)
	}
}

// TestDecisionClaimsBeyondInline admits under policies of one to six rules
// and checks Claims, the refusing claim and the release of every slot.
func TestDecisionClaimsBeyondInline(t *testing.T) {
	ctx := context.Background()
	for n := 1; n <= 6; n++ {
		doc := "version: 1\nrules:\n"
		for i := 0; i < n; i++ {
			doc += fmt.Sprintf("  - {name: r%d, key: ip, connections: %d}\n", i, 2+i)
		}
		p, err := Parse([]byte(doc), "n.yaml")
		if err != nil {
			t.Fatal(err)
		}
		l := NewLimiter(p, Options{})
		store := l.store.(*MemoryStore)
		r := &http.Request{RemoteAddr: "192.0.2.7:1000", Header: http.Header{}}
		d1, d2 := l.Admit(ctx, r), l.Admit(ctx, r)
		if !d1.Allowed || !d2.Allowed {
			t.Fatalf("%d rules: first two admissions refused", n)
		}
		cl := d1.Claims()
		if len(cl) != n {
			t.Fatalf("%d rules: %d claims", n, len(cl))
		}
		for i, c := range cl {
			if c.Rule != fmt.Sprintf("r%d", i) || c.Conns != 2+i || c.Key != keys.IP(netip.MustParseAddr("192.0.2.7")) {
				t.Fatalf("%d rules: claim %d = %+v", n, i, c)
			}
		}
		// r0 (cap 2) refuses the third.
		d3 := l.Admit(ctx, r)
		if c, ok := d3.RefusedClaim(); d3.Allowed || !ok || c.Rule != "r0" {
			t.Fatalf("%d rules: third admission %+v, refused claim %+v", n, d3, c)
		}
		if c, _ := d3.RefusedClaim(); c.Key != keys.IP(netip.MustParseAddr("192.0.2.7")) {
			t.Fatalf("%d rules: refused decision's key = %v", n, c.Key)
		}
		if c, ok := d1.RefusedClaim(); ok || c.Key != (keys.Key{}) {
			t.Fatalf("%d rules: admitted decision's key = %v, want the zero Key", n, c.Key)
		}
		for i := 0; i < n; i++ {
			if got := store.count(fmt.Sprintf("r%d", i), keys.IP(netip.MustParseAddr("192.0.2.7"))); got != 2 {
				t.Fatalf("%d rules: r%d holds %d slots, want 2", n, i, got)
			}
		}
		d1.Release()
		d2.Release()
		for i := 0; i < n; i++ {
			if got := store.count(fmt.Sprintf("r%d", i), keys.IP(netip.MustParseAddr("192.0.2.7"))); got != 0 {
				t.Fatalf("%d rules: r%d holds %d slots after release", n, i, got)
			}
		}
	}
}

// TestClaimLimits checks a claim's limits: a literal's values, a zero
// Claim's zeros, and a compiled rule's limits in the claims a Limiter
// builds.
func TestClaimLimits(t *testing.T) {
	c := Claim{Rule: "r", Key: keys.String("k"), Conns: 3, Limit: 2.5, Burst: 7}
	if c.Rule != "r" || c.Conns != 3 || c.Limit != 2.5 || c.Burst != 7 || c.MaxKeys != 0 || c.RefuseWhenFull {
		t.Fatalf("Claim literal: got %q %d %v %d %d %v", c.Rule, c.Conns, c.Limit, c.Burst, c.MaxKeys, c.RefuseWhenFull)
	}
	var z Claim
	if z.Rule != "" || z.Conns != 0 || z.Limit != 0 || z.Burst != 0 || z.MaxKeys != 0 || z.RefuseWhenFull {
		t.Fatal("zero Claim reports limits")
	}
	// A zero claim limits nothing: the store admits it and releases it.
	s := NewMemoryStore()
	if _, v, err := s.Admit(context.Background(), time.Now(), []Claim{z}); err != nil || !v.OK {
		t.Fatalf("zero claim: %+v %v", v, err)
	}
	if err := s.Release(context.Background(), Lease{}, []Claim{z}); err != nil {
		t.Fatal(err)
	}

	p, err := Parse([]byte(`version: 1
state: {max_keys: 50, on_full: refuse}
rules:
  - {name: per-ip, key: ip, connections: 4, rate: 2/s, burst: 3, max_keys: 20}
  - {name: per-subnet, key: subnet, connections: 9}
`), "claims.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := NewLimiter(p, Options{})
	d := l.Admit(context.Background(), &http.Request{RemoteAddr: "192.0.2.1:1", Header: http.Header{}})
	defer d.Release()
	got := d.Claims()
	if len(got) != 2 {
		t.Fatalf("claims: %d", len(got))
	}
	if c := got[0]; c.Rule != "per-ip" || c.Conns != 4 || c.Limit != 2 || c.Burst != 3 || c.MaxKeys != 20 || !c.RefuseWhenFull {
		t.Fatalf("per-ip claim: %q %d %v %d %d %v", c.Rule, c.Conns, c.Limit, c.Burst, c.MaxKeys, c.RefuseWhenFull)
	}
	if c := got[1]; c.Rule != "per-subnet" || c.Conns != 9 || c.Limit != 0 || c.MaxKeys != 50 {
		t.Fatalf("per-subnet claim: %q %d %v %d", c.Rule, c.Conns, c.Limit, c.MaxKeys)
	}
}
