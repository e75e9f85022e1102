package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/textproto"
	"strings"
)

// MaxHeaderKeyLen is the longest header value that HeaderValue uses as a key
// as it is. A longer value is replaced by a fixed-size digest, so that a
// client cannot make a limiter store keys of the size it chooses.
const MaxHeaderKeyLen = 256

// hashKeyPrefix starts the key of a value that HeaderValue digests.
const hashKeyPrefix = "sha256:"

// HeaderValue returns a string key from the first instance of the request
// header name, trimmed of surrounding whitespace. ok is false when the header
// is absent or empty.
//
// A value longer than MaxHeaderKeyLen is not used as it is: the key is
// "sha256:" followed by the 64 hex digits of the value's SHA-256 digest.
// SHA-256 is used (rather than a faster, seeded hash) because keys must be
// equal across processes that share a store, and because distinct values
// must not be made to collide. A short value that itself begins with
// "sha256:" is digested too, so a digest key never equals a raw value.
//
// The value is whatever the client sent: a key from it is only as good as
// the header's verification (see the package documentation).
func HeaderValue(r *http.Request, name string) (k Key, ok bool) {
	if r == nil {
		return Key{}, false
	}
	v := textproto.TrimString(r.Header.Get(name))
	if v == "" {
		return Key{}, false
	}
	return BoundedString(v), true
}

// BoundedString returns a string key for v that is at most
// MaxHeaderKeyLen+7 bytes: v itself when it is at most MaxHeaderKeyLen
// bytes, otherwise "sha256:" followed by the 64 hex digits of v's SHA-256
// digest. A short v that itself begins with "sha256:" is digested too, so a
// digest key never equals a raw value. Every key taken from client-supplied
// text (headers, cookies, token claims) goes through it, so an attacker
// cannot store large keys.
func BoundedString(v string) Key {
	if len(v) > MaxHeaderKeyLen || strings.HasPrefix(v, hashKeyPrefix) {
		sum := sha256.Sum256([]byte(v))
		var buf [len(hashKeyPrefix) + 2*sha256.Size]byte
		copy(buf[:], hashKeyPrefix)
		hex.Encode(buf[len(hashKeyPrefix):], sum[:])
		v = string(buf[:])
	}
	return String(v)
}
