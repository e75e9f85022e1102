package identity

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/keys"
)

// rsVerifier is RS256-only with issuer, audience and a 30s leeway.
func rsVerifier(t *testing.T) *JWT {
	t.Helper()
	k := tkeys(t)
	return mustJWT(t, JWTConfig{
		Algorithms: []string{"RS256"},
		KeyFile:    writePEM(t, &k.rsa.PublicKey),
		Issuer:     "https://auth.example",
		Audience:   "chat",
		Leeway:     30 * time.Second,
	})
}

// jwksVerifier accepts RS256, ES256 and EdDSA with keys selected by kid.
func jwksVerifier(t *testing.T) *JWT {
	t.Helper()
	k := tkeys(t)
	return mustJWT(t, JWTConfig{
		Algorithms: []string{"RS256", "ES256", "EdDSA"},
		KeyFile: writeJWKS(t,
			jwkOf(t, "rsa1", &k.rsa.PublicKey),
			jwkOf(t, "ec1", &k.ec.PublicKey),
			jwkOf(t, "ed1", k.ed.Public()),
		),
	})
}

// checkRejected asserts that err is an invalid-token error that wraps want
// (when not nil), that id is empty, and that the error does not quote tok.
func checkRejected(t *testing.T, tok string, id Identity, err error, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got identity %+v, want an error", id)
	}
	if !errors.Is(err, ErrInvalidToken) {
		t.Errorf("err = %v, want it to wrap ErrInvalidToken", err)
	}
	if want != nil && !errors.Is(err, want) {
		t.Errorf("err = %v, want it to wrap %v", err, want)
	}
	if !isZero(id) {
		t.Errorf("identity = %+v, want none", id)
	}
	if !strings.HasPrefix(err.Error(), "identity: ") {
		t.Errorf("err = %q, want the prefix \"identity: \"", err)
	}
	if len(tok) > 8 && strings.Contains(err.Error(), tok) {
		t.Errorf("error text contains the token")
	}
}

func TestRejections(t *testing.T) {
	k := tkeys(t)
	rs, jwks := rsVerifier(t), jwksVerifier(t)
	hs := mustJWT(t, JWTConfig{Algorithms: []string{"HS256"}, SecretFile: writeFile(t, "secret", k.secret)})

	valid := sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), nil)
	parts := strings.Split(valid, ".")
	enc := jwtEnc

	tests := []struct {
		name string
		j    *JWT
		tok  string
		want error
	}{
		{"bad signature (other key)", rs, sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), nil), jwt.ErrTokenSignatureInvalid},
		{"tampered payload", rs, parts[0] + "." + enc(`{"sub":"mallory","iss":"https://auth.example","aud":"chat","exp":2000000000}`) + "." + parts[2], jwt.ErrTokenSignatureInvalid},
		{"signature cut", rs, parts[0] + "." + parts[1] + ".", jwt.ErrTokenSignatureInvalid},
		{"alg none", rs, rawToken(`{"alg":"none","typ":"JWT"}`, `{"sub":"mallory","exp":2000000000}`, ""), jwt.ErrTokenSignatureInvalid},
		{"alg None", rs, rawToken(`{"alg":"None","typ":"JWT"}`, `{"sub":"mallory","exp":2000000000}`, ""), jwt.ErrTokenUnverifiable},
		{"alg none on HS verifier", hs, rawToken(`{"alg":"none"}`, `{"sub":"mallory","exp":2000000000}`, ""), jwt.ErrTokenSignatureInvalid},
		{"HS256 with the RSA public key PEM as secret", rs, sign(t, jwt.SigningMethodHS256, pemBytes(t, &k.rsa.PublicKey), claims(nil), nil), jwt.ErrTokenSignatureInvalid},
		{"HS256 with the RSA public key PEM as secret, JWKS", jwks, sign(t, jwt.SigningMethodHS256, pemBytes(t, &k.rsa.PublicKey), claims(nil), map[string]any{"kid": "rsa1"}), jwt.ErrTokenSignatureInvalid},
		{"RS256 token on HS verifier", hs, valid, jwt.ErrTokenSignatureInvalid},
		{"ES256 token on RS verifier", rs, sign(t, jwt.SigningMethodES256, k.ec, claims(nil), nil), jwt.ErrTokenSignatureInvalid},
		{"HS256 with wrong secret", hs, sign(t, jwt.SigningMethodHS256, []byte("fedcba9876543210fedcba9876543210"), claims(nil), nil), jwt.ErrTokenSignatureInvalid},
		{"wrong issuer", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"iss": "https://evil.example"}), nil), jwt.ErrTokenInvalidIssuer},
		{"missing issuer", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"iss": nil}), nil), jwt.ErrTokenInvalidClaims},
		{"wrong audience", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"aud": []string{"admin", "billing"}}), nil), jwt.ErrTokenInvalidAudience},
		{"missing audience", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"aud": nil}), nil), jwt.ErrTokenInvalidClaims},
		{"expired", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": t0.Add(-time.Hour).Unix()}), nil), jwt.ErrTokenExpired},
		{"expired, leeway edge (now == exp+leeway)", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": t0.Add(-30 * time.Second).Unix()}), nil), jwt.ErrTokenExpired},
		{"exp missing", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": nil}), nil), jwt.ErrTokenRequiredClaimMissing},
		{"exp not a number", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": "tomorrow"}), nil), jwt.ErrInvalidType},
		{"not yet valid", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"nbf": t0.Add(time.Hour).Unix()}), nil), jwt.ErrTokenNotValidYet},
		{"not yet valid, leeway edge (nbf == now+leeway+1s)", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"nbf": t0.Add(31 * time.Second).Unix()}), nil), jwt.ErrTokenNotValidYet},
		{"unknown kid in JWKS", jwks, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "rsa9"}), errUnknownKID},
		{"no kid with several JWKS keys", jwks, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), nil), errUnknownKID},
		{"kid not a string", jwks, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": 7}), errKIDType},
		{"kid of a key of another type", jwks, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "ec1"}), errKeyMismatch},
		{"ES384 signed, ES256 kid", jwks, sign(t, jwt.SigningMethodES384, k.ec384, claims(nil), map[string]any{"kid": "ec1"}), jwt.ErrTokenSignatureInvalid},
		{"crit header", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"crit": []string{"b64"}, "b64": false}), errCrit},
		{"malformed base64 header", rs, "eyJhbGciOiJSUzI1NiJ9!." + parts[1] + "." + parts[2], jwt.ErrTokenMalformed},
		{"malformed base64 payload", rs, parts[0] + ".%%%%." + parts[2], jwt.ErrTokenMalformed},
		{"malformed base64 signature", rs, parts[0] + "." + parts[1] + ".***", jwt.ErrTokenMalformed},
		{"padded base64", rs, parts[0] + "=." + parts[1] + "." + parts[2], jwt.ErrTokenMalformed},
		{"non-canonical base64 signature (strict decoding)", rs, parts[0] + "." + parts[1] + "." + nonCanonical(t, parts[2]), jwt.ErrTokenMalformed},
		{"two segments", rs, parts[0] + "." + parts[1], jwt.ErrTokenMalformed},
		{"four segments", rs, valid + ".x", jwt.ErrTokenMalformed},
		{"not JSON", rs, jwtEnc("hello") + "." + parts[1] + "." + parts[2], jwt.ErrTokenMalformed},
		{"garbage", rs, "Bearer", jwt.ErrTokenMalformed},
		{"oversized", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"pad": strings.Repeat("x", 5000)}), nil), errTooLarge},
		{"missing claim", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"sub": nil}), nil), errClaimMissing},
		{"non-string claim", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"sub": 42}), nil), errClaimType},
		{"object claim", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"sub": map[string]any{"id": "alice"}}), nil), errClaimType},
		{"null claim", rs, rawToken(`{"alg":"none"}`, `{"sub":null}`, ""), jwt.ErrTokenSignatureInvalid},
		{"empty claim", rs, sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"sub": ""}), nil), errClaimEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.j.verifications.Load()
			id, err := tt.j.Verify(tt.tok, t0)
			checkRejected(t, tt.tok, id, err, tt.want)

			// The same through a request, twice: a rejection is not cached.
			for range 2 {
				r := httptest.NewRequest("GET", "/ws", nil)
				r.Header.Set("Authorization", "Bearer "+tt.tok)
				id, err := tt.j.Identify(r, t0)
				checkRejected(t, tt.tok, id, err, tt.want)
			}
			if tt.want == errTooLarge && tt.j.verifications.Load() != before {
				t.Errorf("an oversized token reached the key lookup")
			}
			if tt.j.cache.len() != 0 {
				t.Errorf("cache holds %d entries after rejections, want 0", tt.j.cache.len())
			}
		})
	}
}

func jwtEnc(s string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func TestSuccess(t *testing.T) {
	k := tkeys(t)
	t.Setenv("WSLIMIT_TEST_SECRET", string(k.secret))
	exp := t0.Add(time.Hour)
	tests := []struct {
		name   string
		cfg    JWTConfig
		method jwt.SigningMethod
		key    any
		header map[string]any
		claims map[string]any
	}{
		{"HS256 secret_file", JWTConfig{Algorithms: []string{"HS256"}, SecretFile: writeFile(t, "s", append(append([]byte{}, k.secret...), "\r\n"...))}, jwt.SigningMethodHS256, k.secret, nil, nil},
		{"HS256 secret_env", JWTConfig{Algorithms: []string{"HS256"}, SecretEnv: "WSLIMIT_TEST_SECRET"}, jwt.SigningMethodHS256, k.secret, nil, nil},
		{"HS256 JWKS oct", JWTConfig{Algorithms: []string{"HS256"}, KeyFile: writeJWKS(t, jwkOf(t, "h1", k.secret))}, jwt.SigningMethodHS256, k.secret, map[string]any{"kid": "h1"}, nil},
		{"RS256 PEM", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey)}, jwt.SigningMethodRS256, k.rsa, nil, nil},
		{"RS256 PEM, token with a kid", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey)}, jwt.SigningMethodRS256, k.rsa, map[string]any{"kid": "2024-01"}, nil},
		{"PS256 PEM", JWTConfig{Algorithms: []string{"PS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey)}, jwt.SigningMethodPS256, k.rsa, nil, nil},
		{"ES256 PEM", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writePEM(t, &k.ec.PublicKey)}, jwt.SigningMethodES256, k.ec, nil, nil},
		{"ES384 PEM", JWTConfig{Algorithms: []string{"ES384"}, KeyFile: writePEM(t, &k.ec384.PublicKey)}, jwt.SigningMethodES384, k.ec384, nil, nil},
		{"EdDSA PEM", JWTConfig{Algorithms: []string{"EdDSA"}, KeyFile: writePEM(t, k.ed.Public())}, jwt.SigningMethodEdDSA, k.ed, nil, nil},
		{"RS256 JWKS", JWTConfig{Algorithms: []string{"RS256", "ES256", "EdDSA"}, KeyFile: writeJWKS(t, jwkOf(t, "rsa1", &k.rsa.PublicKey), jwkOf(t, "ec1", &k.ec.PublicKey), jwkOf(t, "ed1", k.ed.Public()))}, jwt.SigningMethodRS256, k.rsa, map[string]any{"kid": "rsa1"}, nil},
		{"ES256 JWKS", JWTConfig{Algorithms: []string{"RS256", "ES256", "EdDSA"}, KeyFile: writeJWKS(t, jwkOf(t, "rsa1", &k.rsa.PublicKey), jwkOf(t, "ec1", &k.ec.PublicKey), jwkOf(t, "ed1", k.ed.Public()))}, jwt.SigningMethodES256, k.ec, map[string]any{"kid": "ec1"}, nil},
		{"EdDSA JWKS", JWTConfig{Algorithms: []string{"RS256", "ES256", "EdDSA"}, KeyFile: writeJWKS(t, jwkOf(t, "rsa1", &k.rsa.PublicKey), jwkOf(t, "ec1", &k.ec.PublicKey), jwkOf(t, "ed1", k.ed.Public()))}, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "ed1"}, nil},
		{"JWKS of one key, token without kid", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writeJWKS(t, jwkOf(t, "ec1", &k.ec.PublicKey))}, jwt.SigningMethodES256, k.ec, nil, nil},
		{"JWKS key without kid is the default", JWTConfig{Algorithms: []string{"ES256", "RS256"}, KeyFile: writeJWKS(t, jwkOf(t, "rsa1", &k.rsa.PublicKey), jwkOf(t, "", &k.ec.PublicKey))}, jwt.SigningMethodES256, k.ec, map[string]any{"kid": "rotated-away"}, nil},
		{"issuer, audience list", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey), Issuer: "https://auth.example", Audience: "chat"}, jwt.SigningMethodRS256, k.rsa, nil, map[string]any{"aud": []string{"admin", "chat"}}},
		{"leeway edge, just inside exp", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey), Leeway: 30 * time.Second}, jwt.SigningMethodRS256, k.rsa, nil, map[string]any{"exp": exp.Add(-time.Hour - 29*time.Second).Unix()}},
		{"leeway edge, nbf == now+leeway", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey), Leeway: 30 * time.Second}, jwt.SigningMethodRS256, k.rsa, nil, map[string]any{"nbf": t0.Add(30 * time.Second).Unix()}},
		{"no nbf", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey)}, jwt.SigningMethodRS256, k.rsa, nil, map[string]any{"nbf": nil}},
		{"other claim as key", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &k.rsa.PublicKey), Claim: "plan"}, jwt.SigningMethodRS256, k.rsa, nil, map[string]any{"sub": 42}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := mustJWT(t, tt.cfg)
			c := claims(tt.claims)
			tok := sign(t, tt.method, tt.key, c, tt.header)
			r := httptest.NewRequest("GET", "/ws", nil)
			r.Header.Set("Authorization", "Bearer "+tok)
			id, err := j.Identify(r, t0)
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			wantSub := "alice"
			if tt.cfg.Claim != "" {
				wantSub = c[tt.cfg.Claim].(string)
			}
			wantExp := time.Unix(c["exp"].(int64), 0)
			if id.Subject != wantSub || !id.Expires.Equal(wantExp) || id.Source != "header:Authorization" {
				t.Errorf("identity = {%q %v %q}, want {%q %v %q}", id.Subject, id.Expires, id.Source, wantSub, wantExp, "header:Authorization")
			}
			if plan, ok := id.Claim("plan"); !ok || plan != "pro" {
				t.Errorf("Claim(plan) = %q, %v; want pro, true", plan, ok)
			}
			if _, ok := id.Claim("exp"); ok {
				t.Errorf("Claim(exp) reported a non-string claim")
			}
			if got, want := id.Key(), keys.String(wantSub); got != want {
				t.Errorf("Key() = %v, want %v", got, want)
			}
		})
	}
}

func TestNoToken(t *testing.T) {
	j := rsVerifier(t)
	for name, r := range map[string]*http.Request{
		"nil request":   nil,
		"no header":     httptest.NewRequest("GET", "/ws", nil),
		"basic scheme":  withHeader("Authorization", "Basic YWxpY2U6c2VjcmV0"),
		"bearer empty":  withHeader("Authorization", "Bearer   "),
		"scheme only":   withHeader("Authorization", "Bearer"),
		"token no auth": withHeader("Authorization", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
		"nil URL":       {Header: http.Header{}},
	} {
		t.Run(name, func(t *testing.T) {
			id, err := j.Identify(r, t0)
			if !errors.Is(err, ErrNoToken) || !isZero(id) {
				t.Errorf("Identify = %+v, %v; want ErrNoToken", id, err)
			}
			if errors.Is(err, ErrInvalidToken) {
				t.Errorf("ErrNoToken must not match ErrInvalidToken")
			}
		})
	}
	if _, err := j.Verify("", t0); !errors.Is(err, ErrNoToken) {
		t.Errorf("Verify(\"\") = %v, want ErrNoToken", err)
	}
}

func withHeader(kv ...string) *http.Request {
	r := httptest.NewRequest("GET", "/ws", nil)
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	return r
}

func TestSources(t *testing.T) {
	k := tkeys(t)
	j := mustJWT(t, JWTConfig{
		Algorithms: []string{"HS256"},
		SecretFile: writeFile(t, "s", k.secret),
		From:       []string{"header:authorization", "query:access_token", "cookie:token", "subprotocol", "subprotocol:tok~", "header:X-Token"},
	})
	good := sign(t, jwt.SigningMethodHS256, k.secret, claims(nil), nil)
	bob := sign(t, jwt.SigningMethodHS256, k.secret, claims(map[string]any{"sub": "bob"}), nil)
	bad := sign(t, jwt.SigningMethodHS256, []byte("another secret, 32 bytes long..."), claims(nil), nil)

	req := func(target string, kv ...string) *http.Request {
		r := httptest.NewRequest("GET", target, nil)
		for i := 0; i+1 < len(kv); i += 2 {
			r.Header.Add(kv[i], kv[i+1])
		}
		return r
	}
	tests := []struct {
		name    string
		r       *http.Request
		wantSub string // "" for an error
		wantSrc string
		wantErr error
	}{
		{"bearer", req("/ws", "Authorization", "Bearer "+good), "alice", "header:Authorization", nil},
		{"bearer lower case", req("/ws", "Authorization", "bearer "+good), "alice", "header:Authorization", nil},
		{"bearer upper case, spaces", req("/ws", "Authorization", "  BEARER   "+good+" "), "alice", "header:Authorization", nil},
		{"query", req("/ws?x=1&access_token=" + good), "alice", "query:access_token", nil},
		{"query escaped name", req("/ws?access%5Ftoken=" + good), "alice", "query:access_token", nil},
		{"query first value wins", req("/ws?access_token=" + good + "&access_token=" + bob), "alice", "query:access_token", nil},
		{"query empty first value", req("/ws?access_token=&access_token=" + bob + "&x=1"), "", "", ErrNoToken},
		{"query semicolon pair skipped", req("/ws?access_token=" + bad + ";x&access_token=" + bob), "bob", "query:access_token", nil},
		{"cookie", req("/ws", "Cookie", "a=b; token="+good+"; c=d"), "alice", "cookie:token", nil},
		{"cookie quoted", req("/ws", "Cookie", `token="`+good+`"`), "alice", "cookie:token", nil},
		{"cookie second line", req("/ws", "Cookie", "a=b", "Cookie", "token="+good), "alice", "cookie:token", nil},
		{"cookie invalid pair skipped", req("/ws", "Cookie", `token=a\b; token=`+bob), "bob", "cookie:token", nil},
		{"subprotocol", req("/ws", "Sec-WebSocket-Protocol", "chat, bearer."+good), "alice", "subprotocol:bearer.", nil},
		{"subprotocol second line", req("/ws", "Sec-WebSocket-Protocol", "chat", "Sec-WebSocket-Protocol", "bearer."+good), "alice", "subprotocol:bearer.", nil},
		{"subprotocol custom prefix", req("/ws", "Sec-WebSocket-Protocol", "chat,tok~"+good), "alice", "subprotocol:tok~", nil},
		{"subprotocol bare prefix is no token", req("/ws", "Sec-WebSocket-Protocol", "bearer., chat"), "", "", ErrNoToken},
		{"other header", req("/ws", "X-Token", good), "alice", "header:X-Token", nil},
		{"other header with scheme", req("/ws", "X-Token", "Bearer "+good), "alice", "header:X-Token", nil},
		{"order: header before query", req("/ws?access_token="+bob, "Authorization", "Bearer "+good), "alice", "header:Authorization", nil},
		{"order: query before cookie", req("/ws?access_token="+bob, "Cookie", "token="+good), "bob", "query:access_token", nil},
		{"order: cookie before subprotocol", req("/ws", "Cookie", "token="+bob, "Sec-WebSocket-Protocol", "chat, bearer."+good), "bob", "cookie:token", nil},
		{"order: basic auth skipped", req("/ws?access_token="+bob, "Authorization", "Basic eA=="), "bob", "query:access_token", nil},
		{"first token wins even if invalid", req("/ws?access_token="+good, "Authorization", "Bearer "+bad), "", "", ErrInvalidToken},
		{"invalid query, valid subprotocol", req("/ws?access_token=xyz", "Sec-WebSocket-Protocol", "bearer."+good), "", "", ErrInvalidToken},
		{"oversized query rejected undecoded", req("/ws?access_token=" + strings.Repeat("%41", 2000)), "", "", errTooLarge},
		{"nothing", req("/ws?token="+good, "Cookie", "access_token="+good, "Sec-WebSocket-Protocol", "chat, Bearer."+good), "", "", ErrNoToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := j.Identify(tt.r, t0)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !isZero(id) {
					t.Fatalf("Identify = %+v, %v; want %v", id, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			if id.Subject != tt.wantSub || id.Source != tt.wantSrc {
				t.Errorf("Identify = {%q from %q}, want {%q from %q}", id.Subject, id.Source, tt.wantSub, tt.wantSrc)
			}
		})
	}
}

func TestQueryValueMatchesNetURL(t *testing.T) {
	for _, q := range []string{
		"", "a", "a=", "a=1", "a=1&a=2", "b=1&a=2", "a=%zz&a=2", "%zz=1&a=2", "a;b=1&a=3",
		"a+b=1", "a%20b=1", "&&a=x&", "a=x+y", "a=%2B", "=1&a=2", "a",
	} {
		want := "" // url.Values.Get
		if vs, _ := url.ParseQuery(q); len(vs["a"]) > 0 {
			want = vs["a"][0]
		}
		if got := queryValue(q, "a", 100); got != want {
			t.Errorf("queryValue(%q) = %q, want %q", q, got, want)
		}
	}
}

func TestStripTokenProtocols(t *testing.T) {
	tests := []struct {
		name     string
		lines    []string
		prefixes []string
		want     []string // nil: header removed
		same     bool     // h itself is returned
	}{
		{"no header", nil, nil, nil, true},
		{"nothing to strip", []string{"chat, superchat"}, nil, []string{"chat, superchat"}, true},
		{"token last", []string{"chat, bearer.abc.def.ghi"}, nil, []string{"chat"}, false},
		{"token first", []string{"bearer.x,chat ,  v2"}, nil, []string{"chat, v2"}, false},
		{"token alone", []string{"bearer.x"}, nil, nil, false},
		{"lines", []string{"chat", "bearer.x", "v2, bearer.y"}, nil, []string{"chat", "v2"}, false},
		{"bare prefix", []string{"bearer., chat"}, nil, []string{"chat"}, false},
		{"custom prefixes", []string{"chat, bearer.x, tok~y, z.1"}, []string{"tok~", "z."}, []string{"chat, bearer.x"}, false},
		{"case-sensitive", []string{"Bearer.x, chat"}, nil, []string{"Bearer.x, chat"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Origin": {"https://example.com"}}
			if tt.lines != nil {
				h["Sec-Websocket-Protocol"] = append([]string(nil), tt.lines...)
			}
			got := StripTokenProtocols(h, tt.prefixes...)
			if v := got.Values("Sec-WebSocket-Protocol"); strings.Join(v, "|") != strings.Join(tt.want, "|") || (tt.want == nil) != (v == nil) {
				t.Errorf("lines = %q, want %q", v, tt.want)
			}
			if got.Get("Origin") != "https://example.com" {
				t.Errorf("other headers lost")
			}
			if tt.lines != nil && strings.Join(h["Sec-Websocket-Protocol"], "|") != strings.Join(tt.lines, "|") {
				t.Errorf("input modified: %q", h["Sec-Websocket-Protocol"])
			}
			if same := sameMap(h, got); same != tt.same {
				t.Errorf("returned h itself = %v, want %v", same, tt.same)
			}
		})
	}

	k := tkeys(t)
	j := mustJWT(t, JWTConfig{Algorithms: []string{"HS256"}, SecretFile: writeFile(t, "s", k.secret), From: []string{"subprotocol:tok~"}})
	h := http.Header{"Sec-Websocket-Protocol": {"chat, bearer.x, tok~y"}}
	if got := j.TokenFreeProtocols(h); strings.Join(got, "|") != "chat, bearer.x" {
		t.Errorf("JWT.TokenFreeProtocols = %q, want %q", got, "chat, bearer.x")
	}
	if h.Get("Sec-WebSocket-Protocol") != "chat, bearer.x, tok~y" {
		t.Errorf("JWT.TokenFreeProtocols modified its input: %q", h["Sec-Websocket-Protocol"])
	}
	j2 := rsVerifier(t)
	if got := j2.TokenFreeProtocols(h); got != nil {
		t.Errorf("JWT.TokenFreeProtocols without subprotocol source changed the offer: %q", got)
	}
	only := http.Header{"Sec-Websocket-Protocol": {"tok~y"}}
	if got := j.TokenFreeProtocols(only); got == nil || len(got) != 0 {
		t.Errorf("JWT.TokenFreeProtocols of a token-only offer = %#v, want an empty, non-nil slice", got)
	}
}

// sameMap reports whether a and b are the same map (not merely equal).
func sameMap(a, b http.Header) bool {
	const probe = "X-Same-Map-Probe"
	a[probe] = []string{"1"}
	_, ok := b[probe]
	delete(a, probe)
	return ok
}

func TestCache(t *testing.T) {
	k := tkeys(t)
	j := mustJWT(t, JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writePEM(t, &k.ec.PublicKey), Leeway: 10 * time.Second, From: []string{"header:Authorization", "cookie:token"}})
	exp, nbf := t0.Add(time.Minute), t0.Add(-time.Minute)
	tok := sign(t, jwt.SigningMethodES256, k.ec, claims(map[string]any{"exp": exp.Unix(), "nbf": nbf.Unix()}), nil)

	first, err := j.Verify(tok, t0)
	if err != nil {
		t.Fatal(err)
	}
	if n := j.verifications.Load(); n != 1 {
		t.Fatalf("verifications = %d after the first Verify, want 1", n)
	}
	r := httptest.NewRequest("GET", "/ws", nil)
	r.AddCookie(&http.Cookie{Name: "token", Value: tok})
	for i, now := range []time.Time{t0, exp, exp.Add(10*time.Second - time.Nanosecond), nbf.Add(-10 * time.Second)} {
		id, err := j.Identify(r, now)
		if err != nil {
			t.Fatalf("hit %d at %v: %v", i, now, err)
		}
		if id.Subject != first.Subject || !id.Expires.Equal(first.Expires) || id.Source != "cookie:token" {
			t.Errorf("hit %d = %+v, want the first identity from cookie:token", i, id)
		}
		if plan, _ := id.Claim("plan"); plan != "pro" {
			t.Errorf("hit %d lost the claims", i)
		}
	}
	if n := j.verifications.Load(); n != 1 {
		t.Fatalf("verifications = %d after cache hits, want 1", n)
	}

	// Outside the window the entry is dropped and the token re-verified
	// (and refused).
	for _, now := range []time.Time{exp.Add(10 * time.Second), nbf.Add(-10*time.Second - time.Nanosecond)} {
		before := j.verifications.Load()
		if _, err := j.Identify(r, now); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("at %v: err = %v, want ErrInvalidToken", now, err)
		}
		if j.verifications.Load() != before+1 {
			t.Errorf("at %v: the token was not re-verified", now)
		}
		if n := j.cache.len(); n != 0 {
			t.Errorf("at %v: cache holds %d entries, want 0", now, n)
		}
		// Back inside the window: verified again, then cached again.
		if _, err := j.Identify(r, t0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	k := tkeys(t)
	for _, size := range []int{1, 7, 2000} {
		j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"HS256"}, CacheSize: size}, map[string]any{"": k.secret})
		if err != nil {
			t.Fatal(err)
		}
		for i := range size + 50 {
			tok := sign(t, jwt.SigningMethodHS256, k.secret, claims(map[string]any{"jti": i}), nil)
			if _, err := j.Verify(tok, t0); err != nil {
				t.Fatal(err)
			}
			if n := j.cache.len(); n > size {
				t.Fatalf("size %d: cache holds %d entries", size, n)
			}
		}
		// One shard fills exactly; 16 shards fill unevenly but never exceed.
		if n := j.cache.len(); n != size && (size < shardedAbove || n < size*9/10) {
			t.Errorf("size %d: cache holds %d entries after %d tokens, want %d", size, n, size+50, size)
		}
	}
}

func TestCacheDisabled(t *testing.T) {
	k := tkeys(t)
	j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"HS256"}, CacheSize: -1}, map[string]any{"": k.secret})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, k.secret, claims(nil), nil)
	for range 3 {
		if _, err := j.Verify(tok, t0); err != nil {
			t.Fatal(err)
		}
	}
	if n := j.verifications.Load(); n != 3 {
		t.Errorf("verifications = %d, want 3 with the cache disabled", n)
	}
}

func TestConcurrentIdentify(t *testing.T) {
	k := tkeys(t)
	j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"HS256"}, CacheSize: 2000}, map[string]any{"": k.secret})
	if err != nil {
		t.Fatal(err)
	}
	toks := make([]string, 64)
	for i := range toks {
		toks[i] = sign(t, jwt.SigningMethodHS256, k.secret, claims(map[string]any{"sub": "u" + string(rune('A'+i))}), nil)
	}
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 500 {
				n := (g*31 + i) % len(toks)
				id, err := j.Verify(toks[n], t0)
				if err != nil || id.Subject != "u"+string(rune('A'+n)) {
					t.Errorf("Verify(token %d) = %q, %v", n, id.Subject, err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
}

func TestConfigErrors(t *testing.T) {
	k := tkeys(t)
	pemRSA := writePEM(t, &k.rsa.PublicKey)
	secret := writeFile(t, "secret", k.secret)
	small, err := rsaKey1024()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  JWTConfig
		want string // substring of the error
	}{
		{"no algorithms", JWTConfig{KeyFile: pemRSA}, "algorithms: required"},
		{"none", JWTConfig{Algorithms: []string{"RS256", "none"}, KeyFile: pemRSA}, `"none" is never allowed`},
		{"NONE", JWTConfig{Algorithms: []string{"NONE"}, KeyFile: pemRSA}, "never allowed"},
		{"unknown", JWTConfig{Algorithms: []string{"RS1"}, KeyFile: pemRSA}, "unknown algorithm"},
		{"lower case", JWTConfig{Algorithms: []string{"rs256"}, KeyFile: pemRSA}, "unknown algorithm"},
		{"mixed HS and RS", JWTConfig{Algorithms: []string{"RS256", "HS256"}, KeyFile: pemRSA}, "cannot be mixed"},
		{"mixed HS and EdDSA", JWTConfig{Algorithms: []string{"HS512", "EdDSA"}, SecretFile: secret}, "key confusion"},
		{"no key", JWTConfig{Algorithms: []string{"RS256"}}, "set key_file"},
		{"two keys", JWTConfig{Algorithms: []string{"HS256"}, SecretFile: secret, SecretEnv: "X"}, "exactly one"},
		{"secret with RS", JWTConfig{Algorithms: []string{"RS256"}, SecretFile: secret}, "HS* algorithms only"},
		{"PEM with HS (confusion)", JWTConfig{Algorithms: []string{"HS256"}, KeyFile: pemRSA}, "none of algorithms [HS256] can use"},
		{"RSA PEM with ES256", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: pemRSA}, "RSA-2048 public key, which none"},
		{"P-384 PEM with ES256", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writePEM(t, &k.ec384.PublicKey)}, "P-384"},
		{"short RSA", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writePEM(t, &small.PublicKey)}, "1024 bits"},
		{"missing file", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: "/nonexistent/key.pem"}, "key_file /nonexistent/key.pem"},
		{"not PEM", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte("hello"))}, "no PEM public key"},
		{"private key PEM", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))}, "give the verifier the public key"},
		{"two PEM keys", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", append(pemBytes(t, &k.rsa.PublicKey), pemBytes(t, &k.rsa2.PublicKey)...))}, "holds 2 keys"},
		{"bad PEM body", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))}, "PUBLIC KEY block"},
		{"bad JSON", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte(`{"keys": [`))}, "JWKS"},
		{"empty JWKS", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte(`{"keys": []}`))}, "JWKS: no keys"},
		{"JWKS with no usable key", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeJWKS(t, jwkOf(t, "e", &k.ec.PublicKey), jwkOf(t, "h", k.secret))}, "none of its 2 keys"},
		{"JWKS oct only for HS", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writeJWKS(t, jwkOf(t, "h", k.secret))}, "none of its 1 keys"},
		{"JWKS duplicate kid", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeJWKS(t, jwkOf(t, "a", &k.rsa.PublicKey), jwkOf(t, "a", &k.rsa2.PublicKey))}, `duplicate kid "a"`},
		{"JWKS malformed n", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte(`{"keys":[{"kty":"RSA","kid":"a","n":"!!","e":"AQAB"}]}`))}, `kid "a"`},
		{"JWKS missing e", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: writeFile(t, "k", []byte(`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB"}]}`))}, `member "e" is missing`},
		{"JWKS bad EC point", JWTConfig{Algorithms: []string{"ES256"}, KeyFile: writeFile(t, "k", []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"`+strings.Repeat("A", 43)+`","y":"`+strings.Repeat("A", 43)+`"}]}`))}, "key 0"},
		{"JWKS alg contradicts key", JWTConfig{Algorithms: []string{"RS256", "ES256"}, KeyFile: writeFile(t, "k", func() []byte {
			m := jwkOf(t, "a", &k.rsa.PublicKey)
			m["alg"] = "ES256"
			return []byte(`{"keys":[` + mustJSON(t, m) + `]}`)
		}())}, "alg ES256 does not fit"},
		{"secret env unset", JWTConfig{Algorithms: []string{"HS256"}, SecretEnv: "WSLIMIT_TEST_UNSET_VARIABLE"}, "secret_env WSLIMIT_TEST_UNSET_VARIABLE: environment variable is not set"},
		{"secret too short", JWTConfig{Algorithms: []string{"HS256"}, SecretFile: writeFile(t, "s", []byte("short\n"))}, "secret is 5 bytes; [HS256] needs at least 32"},
		{"secret too short for HS512", JWTConfig{Algorithms: []string{"HS256", "HS512"}, SecretFile: secret}, "needs at least 64"},
		{"negative leeway", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, Leeway: -time.Second}, "leeway"},
		{"negative max", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, MaxTokenBytes: -1}, "max_token_bytes"},
		{"unknown source", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"body:token"}}, `from[0]: unknown source "body:token"`},
		{"header without name", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"header:"}}, "from[0]: header source"},
		{"bad cookie name", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"query:t", "cookie:a b"}}, "from[1]: cookie source"},
		{"query without name", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"query"}}, "query:NAME"},
		{"bad prefix", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"subprotocol:a,b"}}, "token characters"},
		{"duplicate source", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: pemRSA, From: []string{"subprotocol", "subprotocol:bearer."}}, "duplicate source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := NewJWT(tt.cfg)
			if err == nil {
				t.Fatalf("NewJWT succeeded, want an error containing %q", tt.want)
			}
			if j != nil {
				t.Errorf("NewJWT returned a verifier with its error")
			}
			if !strings.HasPrefix(err.Error(), "identity: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), string(k.secret)) {
				t.Errorf("error text contains the secret")
			}
		})
	}
}

func TestNewJWTWithKeys(t *testing.T) {
	k := tkeys(t)
	small, err := rsaKey1024()
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		cfg  JWTConfig
		keys map[string]any
		want string
	}{
		{"no keys", JWTConfig{Algorithms: []string{"RS256"}}, nil, "no keys"},
		{"key_file too", JWTConfig{Algorithms: []string{"RS256"}, KeyFile: "x"}, map[string]any{"": &k.rsa.PublicKey}, "must be empty"},
		{"private key", JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"a": k.rsa}, "private key"},
		{"private ed25519", JWTConfig{Algorithms: []string{"EdDSA"}}, map[string]any{"a": k.ed}, "private key"},
		{"public key with HS", JWTConfig{Algorithms: []string{"HS256"}}, map[string]any{"a": &k.rsa.PublicKey}, "none of algorithms [HS256]"},
		{"PEM bytes with RS", JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"a": pemBytes(t, &k.rsa.PublicKey)}, "HMAC secret, which none"},
		{"short secret", JWTConfig{Algorithms: []string{"HS256"}}, map[string]any{"a": []byte("short")}, "5-byte"},
		{"short RSA", JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"a": &small.PublicKey}, "1024 bits"},
		{"odd type", JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"a": "secret"}, "unsupported key type string"},
		{"nil RSA", JWTConfig{Algorithms: []string{"RS256"}}, map[string]any{"a": (*rsa.PublicKey)(nil)}, "nil RSA key"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewJWTWithKeys(tt.cfg, tt.keys); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}

	// Keys are copied: changing the caller's secret later changes nothing.
	secret := append([]byte(nil), k.secret...)
	j, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"HS256"}}, map[string]any{"": secret})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, k.secret, claims(nil), nil)
	secret[0] ^= 1
	if _, err := j.Verify(tok, t0); err != nil {
		t.Errorf("Verify after the caller changed its secret: %v", err)
	}
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func rsaKey1024() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 1024) }

func isZero(id Identity) bool {
	return id.Subject == "" && id.Expires.IsZero() && id.Source == "" && id.claims == nil
}

// nonCanonical toggles an unused low bit of the last character of a base64url
// segment whose length is 2 mod 4: a lenient decoder reads the same bytes.
func nonCanonical(t *testing.T, seg string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 != 2 {
		t.Fatalf("segment length %d is not 2 mod 4", len(seg))
	}
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	out := seg[:len(seg)-1] + string(alphabet[i^1])
	a, err1 := base64.RawURLEncoding.DecodeString(seg)
	b, err2 := base64.RawURLEncoding.DecodeString(out)
	if err1 != nil || err2 != nil || string(a) != string(b) || out == seg {
		t.Fatalf("nonCanonical did not make an equivalent encoding")
	}
	return out
}
