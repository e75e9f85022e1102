package redisstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/policy"
)

// refusalPolicy: a per-ip cap and a per-ip rate, before a JWT rule whose
// verification shows in Decision.InvalidToken.
const refusalPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_TEST_SECRET
rules:
  - {name: per-ip, key: ip, connections: 1}
  - {name: per-ip-rate, key: ip, rate: 1/10s, burst: 2}
  - {name: per-user, key: jwt, connections: 10}
`

// refusalInstance is one instance's Limiter on a Store of addr under
// prefix, and the count of its scripts (its admission round trips).
func refusalInstance(t *testing.T, addr, prefix, id string) (*policy.Limiter, *scriptHook) {
	t.Helper()
	p, err := policy.Parse([]byte(refusalPolicy), "refusal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := newClient(t, addr)
	h := &scriptHook{}
	c.AddHook(h)
	s := newStore(t, c, Options{Prefix: prefix, InstanceID: id})
	return policy.NewLimiter(p, policy.Options{Store: s}), h
}

func handshake(l *policy.Limiter, remote string, forged bool) *policy.Decision {
	r := httptest.NewRequest("GET", "/ws", nil)
	r.RemoteAddr = remote
	if forged {
		r.Header.Set("Authorization", "Bearer forged.token.value")
	}
	return l.Admit(context.Background(), r)
}

// TestRedisRefusalsVerifyNothing: on Redis, an address whose cap an
// admission filled is refused on that instance without a token verified or
// a round trip, and admitted again at once after a release there; on
// another instance the first refusal is Redis's and the next ones are
// remembered; an address whose bucket an admission emptied is refused by
// rate the same way.
func TestRedisRefusalsVerifyNothing(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_SECRET", "test secret: 32 bytes or more, for HS256")
	addr, prefix := sharedAddr(t), uniquePrefix(t)
	a, aTrips := refusalInstance(t, addr, prefix, "a")
	b, bTrips := refusalInstance(t, addr, prefix, "b")

	held := handshake(a, "203.0.113.1:1", false)
	if !held.Allowed {
		t.Fatalf("first handshake refused: %s %s", held.Rule, held.Reason)
	}
	trips := aTrips.n.Load()
	for i := range 3 {
		d := handshake(a, "203.0.113.1:2", true)
		if d.Allowed || d.Rule != "per-ip" || d.Reason != policy.ReasonConnections || d.InvalidToken {
			t.Fatalf("instance a, refusal %d: allowed %v rule %q reason %s invalid token %v; want per-ip's cap, token not verified",
				i, d.Allowed, d.Rule, d.Reason, d.InvalidToken)
		}
	}
	if n := aTrips.n.Load() - trips; n != 0 {
		t.Errorf("instance a: %d scripts for 3 refusals of a cap it filled, want 0", n)
	}

	trips = bTrips.n.Load()
	for i := range 3 {
		d := handshake(b, "203.0.113.1:3", true)
		if d.Allowed || d.Reason != policy.ReasonConnections || d.InvalidToken != (i == 0) {
			t.Fatalf("instance b, refusal %d: allowed %v reason %s invalid token %v; want only the first verified",
				i, d.Allowed, d.Reason, d.InvalidToken)
		}
	}
	if n := bTrips.n.Load() - trips; n != 1 {
		t.Errorf("instance b: %d scripts for 3 refusals, want 1 (the first)", n)
	}

	held.Release() // freed on a: a admits again at once, with its second token
	again := handshake(a, "203.0.113.1:4", false)
	if !again.Allowed {
		t.Fatalf("after the release on a: refused by %s %s", again.Rule, again.Reason)
	}
	again.Release() // that admission took per-ip-rate's last token
	trips = aTrips.n.Load()
	for i := range 3 {
		d := handshake(a, "203.0.113.1:5", true)
		if d.Allowed || d.Rule != "per-ip-rate" || d.Reason != policy.ReasonRate || d.InvalidToken {
			t.Fatalf("rate refusal %d: allowed %v rule %q reason %s invalid token %v", i, d.Allowed, d.Rule, d.Reason, d.InvalidToken)
		}
		if d.RetryAfter <= 0 || d.RetryAfter > 10*time.Second {
			t.Errorf("rate refusal %d: RetryAfter %v, want in (0, 10s]", i, d.RetryAfter)
		}
	}
	if n := aTrips.n.Load() - trips; n != 0 {
		t.Errorf("instance a: %d scripts for 3 refusals of a bucket it emptied, want 0", n)
	}
}

// BenchmarkRefusedAddressRedis is policy's BenchmarkAdmitRefusedAddress on
// the Redis store: the decision for an address its per-ip rule refuses, by
// its rate or its cap (filled by an admission of this instance), with a
// forged ES256 token (a distinct one per request) and without one. The
// memory of refusals must spare both the signature check and the round
// trip (a full cap's memory lapses after cap_retry_after: one of each per
// second): "forged" should cost about what "no-token" does.
func BenchmarkRefusedAddressRedis(b *testing.B) {
	trusted, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	forger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&trusted.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	keyFile := filepath.Join(b.TempDir(), "es256.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	forged := make([]string, 256)
	for i := range forged {
		forged[i], err = jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
			"sub": fmt.Sprintf("user-%d", i), "exp": time.Now().Add(time.Hour).Unix(),
		}).SignedString(forger)
		if err != nil {
			b.Fatal(err)
		}
	}
	addr := sharedAddr(b)
	for _, by := range []struct{ name, limits string }{{"rate", "rate: 1/h, burst: 1"}, {"cap", "connections: 1"}} {
		for _, mode := range []string{"no-token", "forged"} {
			b.Run(by.name+"/"+mode, func(b *testing.B) {
				p, err := policy.Parse([]byte(fmt.Sprintf(`version: 1
identity:
  jwt: {from: ["header:Authorization"], algorithms: [ES256], key_file: %s}
rules:
  - {name: per-ip, key: ip, %s}
  - {name: per-user, key: jwt, connections: 10}
`, keyFile, by.limits)), "bench.yaml")
				if err != nil {
					b.Fatal(err)
				}
				c, _ := newClient(b, addr)
				l := policy.NewLimiter(p, policy.Options{Store: newStore(b, c, Options{Prefix: uniquePrefix(b)})})
				rs := make([]*http.Request, len(forged))
				for i := range rs {
					rs[i] = &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}}
					if mode == "forged" {
						rs[i].Header.Set("Authorization", "Bearer "+forged[i])
					}
				}
				ctx := context.Background()
				first := l.Admit(ctx, &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}})
				if !first.Allowed {
					b.Fatalf("first handshake refused: %s", first.Reason)
				}
				defer first.Release()
				b.ReportAllocs()
				b.ResetTimer()
				start, verified := time.Now(), 0
				for i := 0; i < b.N; i++ {
					d := l.Admit(ctx, rs[i%len(rs)])
					if d.Allowed || d.Rule != "per-ip" {
						b.Fatalf("want a refusal by per-ip, got %+v", d)
					}
					if d.InvalidToken {
						verified++
					}
				}
				// A full cap is remembered for cap_retry_after (1s): then
				// one handshake goes to Redis again, its token verified.
				if limit := int(time.Since(start)/time.Second) + 1; verified > limit {
					b.Fatalf("%d tokens verified in %v, want at most %d", verified, time.Since(start), limit)
				}
			})
		}
	}
}
