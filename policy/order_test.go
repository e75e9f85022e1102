package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// hs256 signs a token for sub with secret.
func hs256(t *testing.T, secret, sub string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": sub, "exp": t0.Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// orderPolicy: two address rules (a per-ip cap and rate, a subnet cap)
// before a JWT rule and a session-cookie rule whose verification the test
// counts.
const orderPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_TEST_SECRET
  session: {cookie: sid}
rules:
  - {name: per-ip, key: ip, connections: 1, rate: 1/10s, burst: 2}
  - {name: per-subnet, key: subnet, connections: 100}
  - {name: per-user, key: jwt, connections: 1}
  - {name: per-session, key: cookie, connections: 10}
`

// orderLimiter returns a Limiter on orderPolicy with a MemoryStore, its
// store, and the count of cookie verifications.
func orderLimiter(t *testing.T, now *time.Time) (*Limiter, *MemoryStore, *atomic.Int64) {
	t.Helper()
	t.Setenv("WSLIMIT_TEST_SECRET", "test secret: 32 bytes or more, for HS256")
	cfg, _, err := decodeYAML([]byte(orderPolicy), "order.yaml")
	if err != nil {
		t.Fatal(err)
	}
	verified := new(atomic.Int64)
	cfg.Identity.Session.Verify = func(v string) (string, bool) {
		verified.Add(1)
		return v, v != "forged"
	}
	p, err := New(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := NewMemoryStore()
	return NewLimiter(p, Options{Store: store, Now: fixedClock(now)}), store, verified
}

// forgedRequest carries a token that fails verification and a cookie the
// hook refuses: verifying either is visible (InvalidToken, the count).
func forgedRequest(remote string) []string {
	return []string{remote, "Authorization", "Bearer forged.token.value", "Cookie", "sid=forged"}
}

// TestAddressRefusalsVerifyNothing: with the in-memory store, an address
// refused by its cap or its rate, the very first refusal included, is
// refused before any token or cookie is verified, and the refusal charged
// nothing; an address that passes its rules has its identities verified.
func TestAddressRefusalsVerifyNothing(t *testing.T) {
	now := t0
	l, store, verified := orderLimiter(t, &now)
	ctx := context.Background()
	admit := func(hdr ...string) *Decision { return l.Admit(ctx, request(hdr[0], hdr[1:]...)) }

	held := admit("203.0.113.1:1") // takes per-ip's one slot and one of its 2 tokens
	if !held.Allowed {
		t.Fatalf("first handshake refused: %s %s", held.Rule, held.Reason)
	}
	for i := range 3 { // the cap refuses, first time and later
		d := admit(forgedRequest("203.0.113.1:2")...)
		if d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonConnections {
			t.Fatalf("cap refusal %d: allowed %v rule %q reason %s", i, d.Allowed, d.Rule, d.Reason)
		}
		if d.InvalidToken || verified.Load() != 0 {
			t.Fatalf("cap refusal %d verified: invalid token %v, cookie verifications %d", i, d.InvalidToken, verified.Load())
		}
	}
	if got := store.count("per-subnet", held.Claims()[1].Key); got != 1 {
		t.Errorf("per-subnet holds %d slots after the cap refusals, want 1 (the held one)", got)
	}
	held.Release()
	if d := admit("203.0.113.1:3"); !d.Allowed { // the second token
		t.Fatalf("second token refused: %s %s", d.Rule, d.Reason)
	} else {
		d.Release()
	}
	d := admit(forgedRequest("203.0.113.1:4")...) // the bucket is empty: the first rate refusal
	if d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonRate || d.InvalidToken || verified.Load() != 0 {
		t.Fatalf("rate refusal: allowed %v rule %q reason %s invalid token %v verifications %d",
			d.Allowed, d.Rule, d.Reason, d.InvalidToken, verified.Load())
	}
	if d.RetryAfter <= 0 || d.RetryAfter > 10*time.Second {
		t.Errorf("RetryAfter = %v, want in (0, 10s]", d.RetryAfter)
	}
	now = now.Add(10 * time.Second) // one token back
	d = admit(forgedRequest("203.0.113.1:5")...)
	if !d.Allowed || !d.InvalidToken || verified.Load() != 1 {
		t.Fatalf("admitted address: allowed %v (%s %s) invalid token %v verifications %d, want verified once",
			d.Allowed, d.Rule, d.Reason, d.InvalidToken, verified.Load())
	}
}

// TestAddressCheckKeepsAllOrNothing: an address that passes the check and
// an identity rule that refuses: the handshake is refused by the identity
// rule and the address rules keep their slots and tokens.
func TestAddressCheckKeepsAllOrNothing(t *testing.T) {
	now := t0
	l, store, _ := orderLimiter(t, &now)
	ctx := context.Background()
	tok := hs256(t, "test secret: 32 bytes or more, for HS256", "alice")
	user := l.Admit(ctx, request("198.51.100.7:1", "Authorization", "Bearer "+tok))
	if !user.Allowed || user.Identity != "alice" {
		t.Fatalf("alice's first handshake: allowed %v identity %q (%s)", user.Allowed, user.Identity, user.Reason)
	}
	for i := range 2 { // per-user refuses; per-ip's 2 tokens must stay
		d := l.Admit(ctx, request("203.0.113.9:1", "Authorization", "Bearer "+tok))
		if d.Allowed || d.Rule != "per-user" || d.Reason != ReasonConnections {
			t.Fatalf("handshake %d: allowed %v rule %q reason %s, want per-user's cap", i, d.Allowed, d.Rule, d.Reason)
		}
	}
	ip := request("203.0.113.9:1")
	if n := store.count("per-ip", l.Admit(ctx, ip).Claims()[0].Key); n != 1 {
		t.Fatalf("per-ip holds %d slots, want 1 (the admission just made)", n)
	}
	// That admission took one token; the second is still there, so the
	// two refusals spent none.
	if d := l.Admit(ctx, request("203.0.113.9:2")); d.Allowed || d.Reason != ReasonConnections {
		t.Fatalf("want the cap (slot held), got allowed %v reason %s", d.Allowed, d.Reason)
	}
}

// TestAddressCheckConcurrent: many goroutines with forged credentials from
// a capped address and from free addresses; the capped one never reaches a
// verifier, the cap is exact, and every slot comes back.
func TestAddressCheckConcurrent(t *testing.T) {
	now := t0
	l, store, verified := orderLimiter(t, &now)
	ctx := context.Background()
	held := l.Admit(ctx, request("203.0.113.1:1"))
	if !held.Allowed {
		t.Fatal("first handshake refused")
	}
	var wg sync.WaitGroup
	var freeVerified atomic.Int64 // the free address's decisions that verified
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			remote := "203.0.113.1:2" // capped
			if g%2 == 1 {
				remote = "203.0.113.2:2" // free: 1 slot, 2 tokens
			}
			for range 50 {
				hdr := forgedRequest(remote)
				d := l.Admit(ctx, request(hdr[0], hdr[1:]...))
				switch {
				case g%2 == 0 && (d.Allowed || d.InvalidToken || d.Reason != ReasonConnections):
					t.Errorf("capped address: allowed %v invalid token %v reason %s", d.Allowed, d.InvalidToken, d.Reason)
				case g%2 == 1 && d.InvalidToken:
					freeVerified.Add(1)
				}
				d.Release()
			}
		}()
	}
	wg.Wait()
	// Each verification of the token is followed by one of the cookie:
	// every cookie verification is the free address's.
	if got, want := verified.Load(), freeVerified.Load(); got != want || want < 1 {
		t.Errorf("cookie verifications %d, free-address token verifications %d: want equal and at least 1", got, want)
	}
	held.Release()
	if n := store.count("per-ip", held.Claims()[0].Key); n != 0 {
		t.Errorf("per-ip holds %d slots after every release", n)
	}
}
