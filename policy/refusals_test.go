package policy

import (
	"context"
	"strings"
	"testing"
	"time"
)

// opaqueStore hides MemoryStore's check: a store that answers only Admit
// and Release, as policy/redisstore does.
type opaqueStore struct{ Store }

// TestRefusedAddressSkipsVerification: with a store that cannot be asked
// before the token is verified (opaqueStore), once the store refused an
// address by its rate rule, the address's later handshakes are refused before the
// token is looked at (InvalidToken stays false: no verification ran), with
// the store's retry time, until the bucket's next token is due; a reload
// that changes the rule's limits is decided by the store again.
func TestRefusedAddressSkipsVerification(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_SECRET", "test secret: 32 bytes or more, for HS256")
	doc := `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_TEST_SECRET
rules:
  - {name: per-ip, key: ip, rate: 1/10s, burst: %s}
  - {name: per-user, key: jwt, connections: 10}
`
	now := t0
	store := opaqueStore{NewMemoryStore()}
	l := NewLimiter(mustParse(t, sprintf(doc, "1")), Options{Store: store, Now: fixedClock(&now)})
	ctx := context.Background()
	forged := func() *Decision {
		return l.Admit(ctx, request("203.0.113.1:1", "Authorization", "Bearer not.a.token"))
	}
	if d := l.Admit(ctx, request("203.0.113.1:1")); !d.Allowed {
		t.Fatalf("first handshake refused: %s", d.Reason)
	}
	d := forged()
	if d.Allowed || d.Rule != "per-ip" || !d.InvalidToken {
		t.Fatalf("store refusal: allowed %v rule %q invalid %v", d.Allowed, d.Rule, d.InvalidToken)
	}
	now = now.Add(4 * time.Second)
	d = forged()
	if d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonRate || d.InvalidToken {
		t.Fatalf("remembered refusal: allowed %v rule %q reason %s invalid %v (true: the token was verified)", d.Allowed, d.Rule, d.Reason, d.InvalidToken)
	}
	if d.RetryAfter != 6*time.Second {
		t.Errorf("RetryAfter = %v, want 6s", d.RetryAfter)
	}
	if c, ok := d.RefusedClaim(); !ok || c.Rule != "per-ip" || c.Burst != 1 {
		t.Errorf("RefusedClaim = %+v, %v", c, ok)
	}
	now = now.Add(6 * time.Second)
	if d := l.Admit(ctx, request("203.0.113.1:1")); !d.Allowed {
		t.Fatalf("after refill: refused by %s", d.Reason)
	}
	d = forged() // refused by the store, and remembered again
	if d.Allowed || !d.InvalidToken {
		t.Fatalf("store refusal after refill: allowed %v invalid %v", d.Allowed, d.InvalidToken)
	}
	// A bigger burst under the same rule name: the remembered refusal was
	// for other limits, so the store decides (and its bucket, refilling at
	// the old rate's tokens, still has none: refused, but verified).
	l.SetPolicy(mustParse(t, sprintf(doc, "5")))
	if d := forged(); !d.InvalidToken {
		t.Errorf("after a reload with other limits: decided from the old refusal")
	}
}

func sprintf(doc, burst string) string { return strings.Replace(doc, "%s", burst, 1) }
