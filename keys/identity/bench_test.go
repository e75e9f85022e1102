package identity

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// benchIdentify measures Identify for a request carrying tok in the
// Authorization header.
func benchIdentify(b *testing.B, j *JWT, tok string) {
	b.Helper()
	r := httptest.NewRequest("GET", "/ws", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	if _, err := j.Identify(r, t0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := j.Identify(r, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdentifyHit is a reconnect: the token is in the cache.
func BenchmarkIdentifyHit(b *testing.B) {
	k := tkeys(b)
	j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"": &k.rsa.PublicKey})
	if err != nil {
		b.Fatal(err)
	}
	tok := sign(b, jwt.SigningMethodRS256, k.rsa, claims(nil), nil)
	b.Run("header", func(b *testing.B) { benchIdentify(b, j, tok) })

	js, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"RS256"}, From: []string{"cookie:token", "subprotocol", "query:access_token"}},
		map[string]any{"": &k.rsa.PublicKey})
	if err != nil {
		b.Fatal(err)
	}
	for name, r := range map[string]*http.Request{
		"subprotocol": withHeader("Cookie", "a=b; c=d", "Sec-WebSocket-Protocol", "chat, bearer."+tok),
		"query":       httptest.NewRequest("GET", "/ws?v=2&access_token="+tok, nil),
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := js.Identify(r, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	b.Run("parallel", func(b *testing.B) {
		toks := make([]string, 256)
		for i := range toks {
			toks[i] = sign(b, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"jti": i}), nil)
			if _, err := j.Verify(toks[i], t0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := j.Verify(toks[i%len(toks)], t0); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	})
}

// BenchmarkIdentifyMiss verifies the signature every time (cache disabled).
func BenchmarkIdentifyMiss(b *testing.B) {
	k := tkeys(b)
	for _, tt := range []struct {
		name   string
		method jwt.SigningMethod
		sign   any
		verify any
	}{
		{"HS256", jwt.SigningMethodHS256, k.secret, k.secret},
		{"RS256", jwt.SigningMethodRS256, k.rsa, &k.rsa.PublicKey},
		{"ES256", jwt.SigningMethodES256, k.ec, &k.ec.PublicKey},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed, k.ed.Public()},
	} {
		b.Run(tt.name, func(b *testing.B) {
			j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{tt.method.Alg()}, CacheSize: -1}, map[string]any{"": tt.verify})
			if err != nil {
				b.Fatal(err)
			}
			benchIdentify(b, j, sign(b, tt.method, tt.sign, claims(nil), nil))
		})
	}
}

func BenchmarkCookieIdentify(b *testing.B) {
	secret := []byte("a cookie secret of 32 bytes.....")
	r := withHeader("Cookie", "theme=dark; sid="+SignHMACCookie(secret, "session-8c1f"))
	for name, c := range map[string]*Cookie{
		"plain": {Name: "sid"},
		"hmac":  {Name: "sid", Verify: HMACCookieVerifier(secret)},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := c.Identify(r); !ok {
					b.Fatal("no key")
				}
			}
		})
	}
}
