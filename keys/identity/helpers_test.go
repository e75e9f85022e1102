package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// t0 is the fixed "now" of the tests.
var t0 = time.Unix(1_900_000_000, 0).UTC()

// testKeys are generated once per test binary: RSA generation is slow.
type testKeys struct {
	rsa, rsa2 *rsa.PrivateKey
	ec, ec384 *ecdsa.PrivateKey
	ed        ed25519.PrivateKey
	secret    []byte
}

var keysOnce = sync.OnceValue(func() *testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k testKeys
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	k.secret = []byte("0123456789abcdef0123456789abcdef") // 32 bytes
	return &k
})

func tkeys(tb testing.TB) *testKeys {
	tb.Helper()
	return keysOnce()
}

// claims returns valid claims for t0 with the given overrides; a nil
// override value deletes the claim.
func claims(over map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":  "alice",
		"iss":  "https://auth.example",
		"aud":  "chat",
		"exp":  t0.Add(time.Hour).Unix(),
		"nbf":  t0.Add(-time.Minute).Unix(),
		"plan": "pro",
	}
	for k, v := range over {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// sign makes a token; header entries override the defaults (nil deletes).
func sign(tb testing.TB, m jwt.SigningMethod, key any, c jwt.MapClaims, header map[string]any) string {
	tb.Helper()
	tok := jwt.NewWithClaims(m, c)
	for k, v := range header {
		if v == nil {
			delete(tok.Header, k)
		} else {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatalf("sign: %v", err)
	}
	return s
}

// rawToken assembles a token from JSON header and claims and a raw
// signature segment, for tokens no signer would make.
func rawToken(header, payload, sig string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + "." + sig
}

// writePEM writes pub as a PKIX PEM file and returns its path.
func writePEM(tb testing.TB, pub crypto.PublicKey) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return writeFile(tb, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func pemBytes(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func writeFile(tb testing.TB, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// jwkOf renders a public key (or an HMAC secret) as a JWK.
func jwkOf(tb testing.TB, kid string, key any) map[string]any {
	tb.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	m := map[string]any{"kid": kid}
	switch k := key.(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", enc(k.N.Bytes()), enc(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			tb.Fatal(err)
		}
		size := (len(b) - 1) / 2
		m["kty"], m["crv"] = "EC", k.Curve.Params().Name
		m["x"], m["y"] = enc(b[1:1+size]), enc(b[1+size:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", enc(k)
	case []byte:
		m["kty"], m["k"] = "oct", enc(k)
	default:
		tb.Fatalf("jwkOf: %T", key)
	}
	if kid == "" {
		delete(m, "kid")
	}
	return m
}

func writeJWKS(tb testing.TB, jwks ...map[string]any) string {
	tb.Helper()
	b, err := json.Marshal(map[string]any{"keys": jwks})
	if err != nil {
		tb.Fatal(err)
	}
	return writeFile(tb, "jwks.json", b)
}

func mustJWT(tb testing.TB, cfg JWTConfig) *JWT {
	tb.Helper()
	j, err := NewJWT(cfg)
	if err != nil {
		tb.Fatalf("NewJWT: %v", err)
	}
	return j
}
