package keys

import (
	"strings"
	"testing"
)

func TestBoundedString(t *testing.T) {
	short := "alice"
	if got := BoundedString(short); got != String(short) {
		t.Errorf("short value changed: %v", got)
	}
	long := strings.Repeat("x", MaxHeaderKeyLen+1)
	lk := BoundedString(long)
	if !strings.HasPrefix(lk.Str, "sha256:") || len(lk.Str) != len("sha256:")+64 {
		t.Errorf("long value key = %q", lk.Str)
	}
	// A raw value can never equal the digest key of another value.
	if forged := BoundedString(lk.Str); forged == lk {
		t.Error("a value spelled like a digest key collides with the digest key")
	}
	if BoundedString(strings.Repeat("x", MaxHeaderKeyLen)) != String(strings.Repeat("x", MaxHeaderKeyLen)) {
		t.Error("a value of exactly MaxHeaderKeyLen bytes was hashed")
	}
}
