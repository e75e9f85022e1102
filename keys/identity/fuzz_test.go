package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// fuzzSeeds are token-shaped inputs; none verifies under the fuzz keys.
var fuzzSeeds = []string{
	"",
	"Bearer",
	"a.b.c",
	"...",
	// HS256, signed with a secret the verifier does not hold.
	"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMH0.Xw3b1J3y0yO1cM0y8nq2nyP1mX0p7l1d2s1vZx1vN0M",
	// alg none.
	"eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjoyMDAwMDAwMDAwfQ.",
	// kid tricks and crit.
	"eyJhbGciOiJFUzI1NiIsImtpZCI6WzFdfQ.eyJzdWIiOiJ4In0.AAAA",
	"eyJhbGciOiJFZERTQSIsImtpZCI6ImVkMSIsImNyaXQiOlsiYjY0Il19.eyJzdWIiOiJ4In0.AAAA",
	// Non-JSON header, bad base64.
	"aGVsbG8.e30.AAAA",
	"eyJhbGciOiJIUzI1NiJ9=.e30.AAAA",
	"!!!.###.$$$",
}

// fuzzVerifiers builds an HMAC verifier and a JWKS verifier over every
// source; the fuzzer holds none of their keys.
func fuzzVerifiers(f *testing.F) []*JWT {
	f.Helper()
	secret := make([]byte, 32)
	rand.Read(secret)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ed, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	from := []string{"header:Authorization", "query:access_token", "cookie:token", "subprotocol"}
	hs, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"HS256", "HS384"}, From: from, Issuer: "i", Audience: "a"}, map[string]any{"": secret})
	if err != nil {
		f.Fatal(err)
	}
	pk, err := NewJWTWithKeys(JWTConfig{Algorithms: []string{"ES256", "EdDSA"}, From: from, Claim: "uid", MaxTokenBytes: 512},
		map[string]any{"ec1": &ec.PublicKey, "ed1": ed})
	if err != nil {
		f.Fatal(err)
	}
	return []*JWT{hs, pk}
}

func FuzzIdentify(f *testing.F) {
	verifiers := fuzzVerifiers(f)
	for _, s := range fuzzSeeds {
		f.Add(s, "Bearer "+s, "token="+s, "chat, bearer."+s, "access_token="+url.QueryEscape(s))
	}
	f.Add("", "bEaReR  x.y.z ", `token="x.y.z"; token=a`, "bearer., bearer.x", "access_token=%zz&access_token=a.b.c")
	f.Add("", "", "", "", "a;b=1&access_token=&access_token=x")
	f.Fuzz(func(t *testing.T, token, auth, cookie, proto, query string) {
		r := &http.Request{
			Method: "GET",
			URL:    &url.URL{Path: "/ws", RawQuery: query},
			Header: http.Header{
				"Authorization":          {auth},
				"Cookie":                 {cookie},
				"Sec-Websocket-Protocol": {proto},
			},
		}
		for _, j := range verifiers {
			for _, try := range []func() (Identity, error){
				func() (Identity, error) { return j.Identify(r, t0) },
				func() (Identity, error) { return j.Verify(token, t0) },
			} {
				id, err := try()
				if err == nil || !isZero(id) {
					t.Fatalf("random input verified: %+v, %v", id, err)
				}
				if !errors.Is(err, ErrNoToken) && !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("err = %v, want ErrNoToken or ErrInvalidToken", err)
				}
				if len(token) >= 16 && strings.Contains(err.Error(), token) {
					t.Fatalf("error text contains the token")
				}
			}
		}

		// The query scanner agrees with net/url on what it can see.
		if strings.Count(query, "&") < 1000 {
			want := ""
			if vs, _ := url.ParseQuery(query); len(vs["access_token"]) > 0 {
				want = vs["access_token"][0]
			}
			if got := queryValue(query, "access_token", len(query)+1); got != want {
				t.Fatalf("queryValue(%q) = %q, net/url says %q", query, got, want)
			}
		}

		// Stripping leaves no token-carrying protocol and keeps the rest.
		h := r.Header
		stripped := StripTokenProtocols(h)
		if tok := protocolToken(stripped, DefaultProtocolPrefix); tok != "" {
			t.Fatalf("StripTokenProtocols(%q) left a token", proto)
		}
		for _, line := range stripped.Values("Sec-WebSocket-Protocol") {
			for e := range strings.SplitSeq(line, ",") {
				if strings.HasPrefix(trimOWS(e), DefaultProtocolPrefix) {
					t.Fatalf("StripTokenProtocols(%q) left entry %q", proto, e)
				}
			}
		}
		if h["Sec-Websocket-Protocol"][0] != proto {
			t.Fatalf("StripTokenProtocols modified its input")
		}
	})
}

func FuzzCookie(f *testing.F) {
	secret := []byte("fuzz secret, 32 bytes long......")
	f.Add("sid=abc", "abc")
	f.Add(`a=1; sid="quoted"; sid=two`, "user.1."+strings.Repeat("A", 43))
	f.Add("sid=; sid=x", SignHMACCookie(secret, "user.1"))
	f.Add(";;= ; sid ;sid=a\x00b; sid=\"\"\"", ".")
	f.Add("sid="+strings.Repeat("z", 300), SignHMACCookie(secret, "")+"=")
	f.Add("sid="+SignHMACCookie(secret, "u"), "u."+SignHMACCookie(secret, "u"))
	verify := HMACCookieVerifier(secret)
	plain := &Cookie{Name: "sid"}
	signed := &Cookie{Name: "sid", Verify: verify}
	f.Fuzz(func(t *testing.T, header, value string) {
		r := &http.Request{Header: http.Header{"Cookie": {header}}}

		k, ok := plain.Identify(r)
		if ok && (k.Str == "" || len(k.Str) > MaxCookieKeyBytes) {
			t.Fatalf("key %q: empty or longer than %d bytes", k.Str, MaxCookieKeyBytes)
		}
		// The scanner agrees with net/http within the limits both apply.
		if len(header) <= maxCookieHeaderBytes && strings.Count(header, ";") < 3000 {
			c, err := r.Cookie("sid")
			got, found := cookieValue(r.Header, "sid")
			if (err == nil) != found || (found && c.Value != got) {
				t.Fatalf("cookieValue(%q) = %q, %v; net/http: %v, %v", header, got, found, c, err)
			}
		}

		// A verifier accepts exactly the values its signer makes.
		if id, ok := verify(value); ok && SignHMACCookie(secret, id) != value {
			t.Fatalf("verify(%q) accepted id %q", value, id)
		}
		if k, ok := signed.Identify(r); ok {
			v, _ := cookieValue(r.Header, "sid")
			id, _ := verify(v)
			if SignHMACCookie(secret, id) != v || (len(id) <= MaxCookieKeyBytes && !strings.HasPrefix(id, "sha256:") && k.Str != id) {
				t.Fatalf("signed cookie %q gave key %q", v, k.Str)
			}
		}
	})
}
