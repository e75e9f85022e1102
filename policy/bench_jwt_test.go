package policy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWT benchmarks: Limiter.Admit + Release with a per-user JWT rule and a
// per-ip rule, the token in the Authorization header, against the same
// policy without the JWT rule (the baseline). "hit" sends one token every
// time (verified once, then served from the cache); "miss" cycles through
// benchJWTTokens distinct tokens, four times the cache size, so every
// admission verifies a signature and inserts into the cache (evicting).

const (
	benchJWTSecretEnv = "WSLIMIT_BENCH_JWT_SECRET"
	benchJWTSecret    = "bench secret: 32 bytes or more, HS256 needs them"
	benchJWTCache     = 1024 // identity.jwt.cache_size in the benchmarks
	benchJWTTokens    = 4 * benchJWTCache
)

const benchJWTPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [%s]
    %s
    issuer: https://auth.bench
    audience: chat
    cache_size: %d
rules:
%s  - {name: per-ip, key: ip, connections: 1000, rate: 1000000/s, burst: 1000000}
`

const benchJWTRule = `  - {name: per-user, key: jwt, connections: 1000}
`

// benchSigner is one algorithm's key pair and pre-signed tokens, made once
// per process: RSA key generation and signing thousands of RSA tokens are
// too slow to repeat for every -count.
type benchSigner struct {
	alg    string
	method jwt.SigningMethod
	priv   any              // signing key
	pub    crypto.PublicKey // nil for HS256
	hit    string           // the one token of the hit benchmark
	miss   []string         // distinct tokens for the miss benchmark
}

var (
	benchSignersOnce sync.Once
	benchSigners     []*benchSigner
	benchSignersErr  error
)

func loadBenchSigners(b *testing.B) []*benchSigner {
	b.Helper()
	benchSignersOnce.Do(func() { benchSigners, benchSignersErr = makeBenchSigners() })
	if benchSignersErr != nil {
		b.Fatal(benchSignersErr)
	}
	return benchSigners
}

func makeBenchSigners() ([]*benchSigner, error) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	ss := []*benchSigner{
		{alg: "HS256", method: jwt.SigningMethodHS256, priv: []byte(benchJWTSecret)},
		{alg: "RS256", method: jwt.SigningMethodRS256, priv: rk, pub: &rk.PublicKey},
		{alg: "ES256", method: jwt.SigningMethodES256, priv: ek, pub: &ek.PublicKey},
		{alg: "EdDSA", method: jwt.SigningMethodEdDSA, priv: edPriv, pub: edPub},
	}
	// Tokens are valid for a day from now; each limiter's fixed clock is
	// the time it was built.
	now := time.Now()
	sign := func(s *benchSigner, sub string) (string, error) {
		return jwt.NewWithClaims(s.method, jwt.MapClaims{
			"sub": sub, "iss": "https://auth.bench", "aud": "chat",
			"iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(),
		}).SignedString(s.priv)
	}
	for _, s := range ss {
		if s.hit, err = sign(s, "user-hit"); err != nil {
			return nil, err
		}
		s.miss = make([]string, benchJWTTokens)
		for i := range s.miss {
			if s.miss[i], err = sign(s, fmt.Sprintf("user-%d", i)); err != nil {
				return nil, err
			}
		}
	}
	return ss, nil
}

// keyLine returns the policy line that gives the verifier its key: a PEM
// file in dir for public keys, the environment for HS256.
func (s *benchSigner) keyLine(b *testing.B, dir string) string {
	b.Helper()
	if s.pub == nil {
		b.Setenv(benchJWTSecretEnv, benchJWTSecret)
		return "secret_env: " + benchJWTSecretEnv
	}
	der, err := x509.MarshalPKIXPublicKey(s.pub)
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(dir, s.alg+".pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	return "key_file: " + file
}

// bearerPool returns len(toks) requests from distinct client addresses,
// request i carrying toks[i] in the Authorization header.
func bearerPool(toks []string) []*http.Request {
	rs := pool(len(toks))
	for i, r := range rs {
		r.Header.Set("Authorization", "Bearer "+toks[i])
	}
	return rs
}

func benchAdmitRelease(b *testing.B, l *Limiter, rs []*http.Request) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := l.Admit(ctx, rs[i%len(rs)])
		if !d.Allowed {
			b.Fatalf("refused: %s %s", d.Rule, d.Reason)
		}
		if i < len(rs) && d.InvalidToken {
			b.Fatal("token did not verify")
		}
		d.Release()
	}
}

// BenchmarkAdmitReleaseJWT: see the comment at the top of this file.
func BenchmarkAdmitReleaseJWT(b *testing.B) {
	signers := loadBenchSigners(b)
	same := make([]string, benchJWTTokens)
	for i := range same {
		same[i] = signers[0].hit
	}

	b.Run("baseline", func(b *testing.B) {
		doc := fmt.Sprintf(benchJWTPolicy, "HS256", signers[0].keyLine(b, b.TempDir()), benchJWTCache, "")
		benchAdmitRelease(b, benchLimiter(b, doc), bearerPool(same))
	})
	for _, s := range signers {
		for _, mode := range []string{"hit", "miss"} {
			b.Run(s.alg+"/"+mode, func(b *testing.B) {
				doc := fmt.Sprintf(benchJWTPolicy, s.alg, s.keyLine(b, b.TempDir()), benchJWTCache, benchJWTRule)
				toks := s.miss
				if mode == "hit" {
					toks = make([]string, benchJWTTokens)
					for i := range toks {
						toks[i] = s.hit
					}
				}
				l := benchLimiter(b, doc)
				// The verifier works: the first request is admitted with
				// the per-user rule's key.
				d := l.Admit(context.Background(), bearerPool(toks[:1])[0])
				if !d.Allowed || d.Identity == "" {
					b.Fatalf("token not verified: %+v", d)
				}
				d.Release()
				benchAdmitRelease(b, l, bearerPool(toks))
			})
		}
	}
}
