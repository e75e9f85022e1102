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

// oneTripStore is a store without a check of its own, as Redis: it decides
// only in Admit, and reports in its admissions the caps they filled and
// the buckets they emptied (Verdict.Full, Empty) when report is set. It
// counts the Admit calls that reach it.
type oneTripStore struct {
	inner  *MemoryStore
	report bool
	admits atomic.Int64
}

func (s *oneTripStore) Admit(ctx context.Context, now time.Time, claims []Claim) (Lease, Verdict, error) {
	s.admits.Add(1)
	lease, v, err := s.inner.Admit(ctx, now, claims)
	if err != nil || !v.OK || !s.report {
		return lease, v, err
	}
	for i := range claims { // what the admission left: a full cap, an empty bucket
		capOnly, rateOnly := claims[i], claims[i]
		capOnly.Limit, rateOnly.Conns = 0, 0
		if s.inner.check(now, []Claim{capOnly}).Reason == ReasonConnections {
			v.Full |= 1 << i
		}
		if after := s.inner.check(now, []Claim{rateOnly}); after.Reason == ReasonRate {
			v.Empty |= 1 << i
			v.RetryAfter = after.RetryAfter
		}
	}
	return lease, v, nil
}

func (s *oneTripStore) Release(ctx context.Context, l Lease, claims []Claim) error {
	return s.inner.Release(ctx, l, claims)
}

func (s *oneTripStore) Close() error { return nil }

// TestOneTripStoreRefusalsVerifyNothing: with a store that has no check,
// an address whose cap or bucket an admission filled (Full, Empty) is
// refused from the limiter's memory: no token or cookie verified, no store
// call, Retry-After the policy's; a release on this instance forgets the
// full cap at once. A refusal the store makes without having reported the
// admission (another instance filled the cap) is remembered the same way.
func TestOneTripStoreRefusalsVerifyNothing(t *testing.T) {
	now := t0
	l, _, verified := orderLimiter(t, &now)
	st := &oneTripStore{inner: NewMemoryStore(), report: true}
	l = NewLimiter(l.Policy(), Options{Store: st, Now: fixedClock(&now)})
	ctx := context.Background()
	admit := func(hdr ...string) *Decision { return l.Admit(ctx, request(hdr[0], hdr[1:]...)) }

	held := admit("203.0.113.1:1") // per-ip's one slot, one of its 2 tokens
	if !held.Allowed || st.admits.Load() != 1 {
		t.Fatalf("first handshake: allowed %v (%s), store calls %d", held.Allowed, held.Reason, st.admits.Load())
	}
	for i := range 3 {
		d := admit(forgedRequest("203.0.113.1:2")...)
		if d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonConnections || d.RetryAfter != time.Second {
			t.Fatalf("cap refusal %d: allowed %v rule %q reason %s retry %v", i, d.Allowed, d.Rule, d.Reason, d.RetryAfter)
		}
		if d.InvalidToken || verified.Load() != 0 || st.admits.Load() != 1 {
			t.Fatalf("cap refusal %d: invalid token %v, verifications %d, store calls %d; want none of them",
				i, d.InvalidToken, verified.Load(), st.admits.Load())
		}
	}
	held.Release()
	second := admit("203.0.113.1:3") // released here: the store decides at once
	if !second.Allowed || st.admits.Load() != 2 {
		t.Fatalf("after the release: allowed %v (%s %s), store calls %d, want admitted by the store",
			second.Allowed, second.Rule, second.Reason, st.admits.Load())
	}
	second.Release() // that admission took the last token: Empty
	d := admit(forgedRequest("203.0.113.1:4")...)
	if d.Allowed || d.Reason != ReasonRate || d.InvalidToken || verified.Load() != 0 || st.admits.Load() != 2 {
		t.Fatalf("rate refusal: allowed %v reason %s invalid token %v verifications %d store calls %d",
			d.Allowed, d.Reason, d.InvalidToken, verified.Load(), st.admits.Load())
	}
	if d.RetryAfter <= 0 || d.RetryAfter > 10*time.Second {
		t.Errorf("RetryAfter = %v, want in (0, 10s]", d.RetryAfter)
	}
	now = now.Add(10 * time.Second) // a token back
	if d := admit(forgedRequest("203.0.113.1:5")...); !d.Allowed || !d.InvalidToken || st.admits.Load() != 3 {
		t.Fatalf("token back: allowed %v (%s) invalid token %v store calls %d", d.Allowed, d.Reason, d.InvalidToken, st.admits.Load())
	}

	// Unreported: the first refusal is the store's (identities verified
	// before it), the next ones are remembered.
	st.report = false
	other := admit("203.0.113.7:1")
	if !other.Allowed {
		t.Fatalf("203.0.113.7 refused: %s", other.Reason)
	}
	base, calls := verified.Load(), st.admits.Load()
	for i := range 3 {
		d := admit(forgedRequest("203.0.113.7:2")...)
		if d.Allowed || d.Reason != ReasonConnections {
			t.Fatalf("unreported cap %d: allowed %v reason %s", i, d.Allowed, d.Reason)
		}
	}
	if v, c := verified.Load()-base, st.admits.Load()-calls; v != 1 || c != 1 {
		t.Errorf("3 refusals of a full cap not reported: %d verifications, %d store calls; want 1 and 1", v, c)
	}
	now = now.Add(time.Second) // cap_retry_after: the memory lapses, the store decides again
	if d := admit("203.0.113.7:3"); d.Allowed || st.admits.Load()-calls != 2 {
		t.Errorf("after cap_retry_after: allowed %v, store calls %d, want refused by the store", d.Allowed, st.admits.Load()-calls)
	}
}

// TestOneTripStoreDryRunAsksStore: a dry run is never decided from the
// memory: every handshake reaches the store.
func TestOneTripStoreDryRunAsksStore(t *testing.T) {
	now := t0
	st := &oneTripStore{inner: NewMemoryStore(), report: true}
	l := NewLimiter(mustParse(t, "version: 1\nmode: dry_run\nrules:\n  - {name: per-ip, key: ip, connections: 1, rate: 1/10s, burst: 1}\n"),
		Options{Store: st, Now: fixedClock(&now)})
	for i := range 4 {
		d := l.Admit(context.Background(), request("203.0.113.1:1"))
		if !d.Allowed {
			t.Fatalf("dry run refused handshake %d", i)
		}
	}
	if n := st.admits.Load(); n != 4 {
		t.Errorf("store calls %d, want 4", n)
	}
}

// TestOneTripStoreCapsExact: full caps are not remembered where no
// signature is at stake (a policy without identity rules) nor for a global
// key (it would refuse everyone here while other instances free slots):
// each refusal is the store's, so a slot freed elsewhere is used at once.
func TestOneTripStoreCapsExact(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_SECRET", "test secret: 32 bytes or more, for HS256")
	for _, doc := range []string{
		"version: 1\nrules:\n  - {name: per-ip, key: ip, connections: 1}\n",
		"version: 1\nidentity:\n  jwt: {from: [\"header:Authorization\"], algorithms: [HS256], secret_env: WSLIMIT_TEST_SECRET}\n" +
			"rules:\n  - {name: everyone, key: global, connections: 1}\n  - {name: per-user, key: jwt, connections: 1}\n",
	} {
		now := t0
		st := &oneTripStore{inner: NewMemoryStore(), report: true}
		l := NewLimiter(mustParse(t, doc), Options{Store: st, Now: fixedClock(&now)})
		ctx := context.Background()
		held := l.Admit(ctx, request("203.0.113.1:1"))
		if !held.Allowed {
			t.Fatalf("first handshake refused: %s", held.Reason)
		}
		for range 2 {
			if d := l.Admit(ctx, request("203.0.113.1:2")); d.Allowed || d.Reason != ReasonConnections {
				t.Fatalf("allowed %v reason %s, want the cap", d.Allowed, d.Reason)
			}
		}
		// Freed behind the limiter's back, as by another instance.
		if err := st.inner.Release(ctx, Lease{}, held.Claims()); err != nil {
			t.Fatal(err)
		}
		if d := l.Admit(ctx, request("203.0.113.1:3")); !d.Allowed {
			t.Errorf("%q: a slot freed elsewhere refused (%s %s)", doc, d.Rule, d.Reason)
		}
		if n := st.admits.Load(); n != 4 {
			t.Errorf("%q: store calls %d, want 4 (every handshake)", doc, n)
		}
	}
}
