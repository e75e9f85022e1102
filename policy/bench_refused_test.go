package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// benchRefusedPolicy: a per-ip rate rule that one handshake empties, before
// an ES256 per-user rule.
const benchRefusedPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [ES256]
    %s
    issuer: https://auth.bench
    audience: chat
rules:
  - {name: per-ip, key: ip, rate: 1/h, burst: 1}
  - {name: per-user, key: jwt, connections: 10}
`

// BenchmarkAdmitRefusedAddress: the decision for an address its rate rule
// already refused, with a forged ES256 token (signed by another key; each
// request a distinct token, so no cache helps) and without a token. Cheap
// before costly (brief semantic 14): the forged token must not cost its
// signature check, so "forged" should cost about what "no-token" does.
func BenchmarkAdmitRefusedAddress(b *testing.B) {
	s := loadBenchSigners(b)[2] // ES256
	forger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	forged := make([]string, 256)
	for i := range forged {
		forged[i], err = jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
			"sub": fmt.Sprintf("user-%d", i), "iss": "https://auth.bench", "aud": "chat",
			"iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(),
		}).SignedString(forger)
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, mode := range []string{"no-token", "forged"} {
		b.Run(mode, func(b *testing.B) {
			l := benchLimiter(b, fmt.Sprintf(benchRefusedPolicy, s.keyLine(b, b.TempDir())))
			rs := make([]*http.Request, len(forged))
			for i := range rs {
				rs[i] = &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}}
				if mode == "forged" {
					rs[i].Header.Set("Authorization", "Bearer "+forged[i])
				}
			}
			ctx := context.Background()
			// The first handshake takes the address's only token; the
			// limiter's clock stands still, so every later one is refused.
			l.Admit(ctx, &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}}).Release()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d := l.Admit(ctx, rs[i%len(rs)])
				if d.Allowed || d.Rule != "per-ip" {
					b.Fatalf("want refusal by per-ip, got %+v", d)
				}
			}
		})
	}
}
