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

// benchRefusedPolicy: a per-ip rule (%s: a rate that one handshake empties,
// or a cap that one handshake fills) before an ES256 per-user rule (%s:
// its key line).
const benchRefusedPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [ES256]
    %[2]s
    issuer: https://auth.bench
    audience: chat
rules:
  - {name: per-ip, key: ip, %[1]s}
  - {name: per-user, key: jwt, connections: 10}
`

// BenchmarkAdmitRefusedAddress: the decision for an address its per-ip
// rule refuses, by its rate (already refused once) or by its cap (held by
// an admission the benchmark keeps), with a forged ES256 token (signed by
// another key; each request a distinct token, so no cache helps) and
// without a token. Cheap before costly (brief semantic 14, issue 15 item
// 5): the forged token must not cost its signature check, so "forged"
// should cost about what "no-token" does.
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
	for _, by := range []struct{ name, limits string }{{"rate", "rate: 1/h, burst: 1"}, {"cap", "connections: 1"}} {
		for _, mode := range []string{"no-token", "forged"} {
			b.Run(by.name+"/"+mode, func(b *testing.B) {
				l := benchLimiter(b, fmt.Sprintf(benchRefusedPolicy, by.limits, s.keyLine(b, b.TempDir())))
				rs := make([]*http.Request, len(forged))
				for i := range rs {
					rs[i] = &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}}
					if mode == "forged" {
						rs[i].Header.Set("Authorization", "Bearer "+forged[i])
					}
				}
				ctx := context.Background()
				// The first handshake takes the address's only token (the
				// limiter's clock stands still) or its only slot (held to
				// the end): every later one is refused.
				first := l.Admit(ctx, &http.Request{Method: http.MethodGet, RemoteAddr: "10.0.0.1:4000", Header: http.Header{}})
				defer first.Release()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					d := l.Admit(ctx, rs[i%len(rs)])
					if d.Allowed || d.Rule != "per-ip" || d.InvalidToken {
						b.Fatalf("want refusal by per-ip, no token verified, got %+v", d)
					}
				}
			})
		}
	}
}
