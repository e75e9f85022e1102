package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
)

func TestHeaderValue(t *testing.T) {
	long := strings.Repeat("x", MaxHeaderKeyLen+1)
	for _, tc := range []struct {
		name   string
		values []string
		want   string
		ok     bool
	}{
		{"absent", nil, "", false},
		{"empty", []string{""}, "", false},
		{"blank", []string{" \t "}, "", false},
		{"value", []string{"tenant-42"}, "tenant-42", true},
		{"trimmed", []string{"  tenant-42\t"}, "tenant-42", true},
		{"first instance", []string{"a", "b"}, "a", true},
		{"empty first instance", []string{"", "b"}, "", false},
		{"at the limit, raw", []string{strings.Repeat("y", MaxHeaderKeyLen)}, strings.Repeat("y", MaxHeaderKeyLen), true},
		{"over the limit, digest", []string{long}, "sha256:" + sha256Hex(long), true},
		{"1 MiB, digest", []string{strings.Repeat("z", 1<<20)}, "sha256:" + sha256Hex(strings.Repeat("z", 1<<20)), true},
		{"digest-looking value is digested", []string{"sha256:abc"}, "sha256:" + sha256Hex("sha256:abc"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: http.Header{}}
			for _, v := range tc.values {
				r.Header.Add("X-Tenant", v)
			}
			got, ok := HeaderValue(r, "x-tenant")
			if ok != tc.ok {
				t.Fatalf("HeaderValue ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				if got != (Key{}) {
					t.Errorf("HeaderValue = %v with ok false, want the zero Key", got)
				}
				return
			}
			if want := String(tc.want); got != want {
				t.Errorf("HeaderValue = %q, want %q", clip(got.Str), clip(want.Str))
			}
			if len(got.Str) > MaxHeaderKeyLen {
				t.Errorf("key is %d bytes long, more than MaxHeaderKeyLen", len(got.Str))
			}
		})
	}
	if _, ok := HeaderValue(nil, "X-Tenant"); ok {
		t.Errorf("HeaderValue(nil) ok = true, want false")
	}
}

// TestHeaderValueDigestDistinct guards against long values that share a
// prefix sharing a key.
func TestHeaderValueDigestDistinct(t *testing.T) {
	base := strings.Repeat("x", 2*MaxHeaderKeyLen)
	r1 := &http.Request{Header: http.Header{"X-Tenant": {base + "1"}}}
	r2 := &http.Request{Header: http.Header{"X-Tenant": {base + "2"}}}
	k1, _ := HeaderValue(r1, "X-Tenant")
	k2, _ := HeaderValue(r2, "X-Tenant")
	if k1 == k2 {
		t.Errorf("distinct long values gave the same key %v", k1)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
