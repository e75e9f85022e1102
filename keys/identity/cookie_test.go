package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wslimit/wslimit/keys"
)

func cookieReq(lines ...string) *http.Request {
	r := httptest.NewRequest("GET", "/ws", nil)
	for _, l := range lines {
		r.Header.Add("Cookie", l)
	}
	return r
}

func TestCookieIdentify(t *testing.T) {
	long := strings.Repeat("v", MaxCookieKeyBytes+1)
	sum := sha256.Sum256([]byte(long))
	tests := []struct {
		name  string
		c     *Cookie
		r     *http.Request
		want  string
		found bool
	}{
		{"plain", &Cookie{Name: "sid"}, cookieReq("a=1; sid=abc123; b=2"), "abc123", true},
		{"quoted", &Cookie{Name: "sid"}, cookieReq(`sid="abc"`), "abc", true},
		{"first wins", &Cookie{Name: "sid"}, cookieReq("sid=one; sid=two"), "one", true},
		{"invalid pair skipped", &Cookie{Name: "sid"}, cookieReq(`sid=a"b; sid=two`), "two", true},
		{"second line", &Cookie{Name: "sid"}, cookieReq("a=1", "sid=x"), "x", true},
		{"exactly 256 bytes kept", &Cookie{Name: "sid"}, cookieReq("sid=" + long[1:]), long[1:], true},
		{"long value hashed", &Cookie{Name: "sid"}, cookieReq("sid=" + long), "sha256:" + hex.EncodeToString(sum[:]), true},
		{"absent", &Cookie{Name: "sid"}, cookieReq("a=1"), "", false},
		{"no header", &Cookie{Name: "sid"}, httptest.NewRequest("GET", "/", nil), "", false},
		{"empty", &Cookie{Name: "sid"}, cookieReq("sid="), "", false},
		{"empty quoted", &Cookie{Name: "sid"}, cookieReq(`sid=""`), "", false},
		{"name only", &Cookie{Name: "sid"}, cookieReq("sid"), "", false},
		{"case-sensitive name", &Cookie{Name: "sid"}, cookieReq("SID=x"), "", false},
		{"control byte", &Cookie{Name: "sid"}, cookieReq("sid=a\x01b"), "", false},
		{"malformed header", &Cookie{Name: "sid"}, cookieReq(";;;=;=x;sid;\"\";  ;"), "", false},
		{"huge header ignored", &Cookie{Name: "sid"}, cookieReq("a="+strings.Repeat("x", maxCookieHeaderBytes), "sid=late"), "", false},
		{"no name", &Cookie{}, cookieReq("=x"), "", false},
		{"invalid name", &Cookie{Name: "s d"}, cookieReq("s d=x"), "", false},
		{"nil cookie", nil, cookieReq("sid=x"), "", false},
		{"nil request", &Cookie{Name: "sid"}, nil, "", false},
		{"verify maps", &Cookie{Name: "sid", Verify: func(v string) (string, bool) { return "user-" + v, true }}, cookieReq("sid=7"), "user-7", true},
		{"verify refuses", &Cookie{Name: "sid", Verify: func(string) (string, bool) { return "x", false }}, cookieReq("sid=7"), "", false},
		{"verify empty id", &Cookie{Name: "sid", Verify: func(string) (string, bool) { return "", true }}, cookieReq("sid=7"), "", false},
		{"verify long id hashed", &Cookie{Name: "sid", Verify: func(string) (string, bool) { return long, true }}, cookieReq("sid=7"), "sha256:" + hex.EncodeToString(sum[:]), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, ok := tt.c.Identify(tt.r)
			if ok != tt.found {
				t.Fatalf("Identify = %v, %v; want found = %v", k, ok, tt.found)
			}
			if !ok {
				if k != (keys.Key{}) {
					t.Errorf("key %v returned with false", k)
				}
				return
			}
			if want := keys.String(tt.want); k != want {
				t.Errorf("key = %v, want %v", k, want)
			}
			if len(k.Str) > MaxCookieKeyBytes {
				t.Errorf("key of %d bytes, limit %d", len(k.Str), MaxCookieKeyBytes)
			}
		})
	}
}

func TestCookieValueMatchesNetHTTP(t *testing.T) {
	for _, lines := range [][]string{
		{"sid=a"}, {" sid = a "}, {"sid= a"}, {"sid=\"a b\""}, {"sid=\""}, {"sid=\"\"\""}, {"x=1;sid=2;sid=3"},
		{"sid=a,b"}, {"sid=a\tb"}, {"sid=é"}, {"a", "sid=b"}, {"sid;sid=1"}, {"\tsid=1\t"},
	} {
		r := cookieReq(lines...)
		want, err := r.Cookie("sid")
		got, ok := cookieValue(r.Header, "sid")
		if (err == nil) != ok || (ok && got != want.Value) {
			t.Errorf("cookieValue(%q) = %q, %v; net/http: %v, %v", lines, got, ok, want, err)
		}
	}
}

func TestHMACCookieVerifier(t *testing.T) {
	secret := []byte("a cookie secret of 32 bytes.....")
	verify := HMACCookieVerifier(secret)
	good := SignHMACCookie(secret, "user.42")
	if got := good; !strings.HasPrefix(got, "user.42.") || len(got) != len("user.42.")+43 {
		t.Fatalf("SignHMACCookie = %q", got)
	}
	sig := good[len("user.42."):]
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	tests := []struct {
		name   string
		value  string
		wantID string
		ok     bool
	}{
		{"good", good, "user.42", true},
		{"tampered id", "user.43." + sig, "", false},
		{"tampered mac", flip(good, len(good)-5), "", false},
		{"other secret", SignHMACCookie([]byte("another secret of 32 bytes......"), "user.42"), "", false},
		{"mac only", "." + sig, "", false},
		{"no dot", "user42" + sig, "", false},
		{"empty", "", "", false},
		{"short mac", good[:len(good)-1], "", false},
		{"long mac", good + "A", "", false},
		{"padded mac", "user.42." + sig[:42] + "=", "", false},
		{"non-canonical mac", "user.42." + sig[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", sig[42])^1]), "", false},
		{"std base64 chars", "user.42." + strings.Repeat("+", 43), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := verify(tt.value)
			if id != tt.wantID || ok != tt.ok {
				t.Errorf("verify(%q) = %q, %v; want %q, %v", tt.value, id, ok, tt.wantID, tt.ok)
			}
		})
	}

	// Copying: changing the caller's secret afterwards changes nothing.
	secret[0] ^= 1
	if _, ok := verify(good); !ok {
		t.Errorf("verifier depends on the caller's secret slice")
	}
	if _, ok := HMACCookieVerifier(nil)(SignHMACCookie(nil, "x")); ok {
		t.Errorf("an empty secret accepted a value")
	}

	c := Cookie{Name: "sid", Verify: HMACCookieVerifier([]byte("a cookie secret of 32 bytes....."))}
	if k, ok := c.Identify(cookieReq("sid=" + good)); !ok || k != keys.String("user.42") {
		t.Errorf("Identify = %v, %v; want user.42", k, ok)
	}
	if _, ok := c.Identify(cookieReq("sid=user.43." + sig)); ok {
		t.Errorf("Identify accepted a tampered cookie")
	}
}

// TestCookiePresent: Present tells a cookie Verify refuses from an absent
// or empty one.
func TestCookiePresent(t *testing.T) {
	c := &Cookie{Name: "sid", Verify: func(string) (string, bool) { return "", false }}
	for _, tc := range []struct {
		header string
		want   bool
	}{{"", false}, {"sid=", false}, {"other=x", false}, {"sid=forged", true}, {"a=1; sid=\"v\"", true}} {
		r, _ := http.NewRequest("GET", "/", nil)
		if tc.header != "" {
			r.Header.Set("Cookie", tc.header)
		}
		if _, ok := c.Identify(r); ok {
			t.Errorf("%q: Identify accepted a value Verify refuses", tc.header)
		}
		if got := c.Present(r); got != tc.want {
			t.Errorf("%q: Present %v, want %v", tc.header, got, tc.want)
		}
	}
}
