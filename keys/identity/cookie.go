package identity

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/wslimit/wslimit/keys"
)

// MaxCookieKeyBytes is the longest cookie value (or verified id) used as a
// key as is; longer ones (and values that themselves begin with "sha256:")
// are replaced by "sha256:" and the hex SHA-256 of the value
// ([keys.BoundedString]), so a key stays small and a long value is never
// stored raw.
const MaxCookieKeyBytes = keys.MaxHeaderKeyLen

// maxCookieHeaderBytes bounds how much of a request's Cookie headers is
// read. Cookies past the bound are treated as absent: a client that sends
// them could as well have sent none.
const maxCookieHeaderBytes = 64 << 10

// Cookie keys requests by a session cookie.
//
// Without Verify the cookie is opaque and attacker-mintable: a client can
// send a fresh value with every handshake and be a new key each time. A
// rule keyed by an unverified cookie must therefore be combined with an IP
// or subnet rule. With Verify, only values the application vouches for
// become keys.
//
// A Cookie is safe for concurrent use if Verify is.
type Cookie struct {
	// Name is the cookie's name.
	Name string
	// Verify, when not nil, checks a cookie value and returns the id that
	// becomes the key (for example the session or user id the value
	// carries). A value it refuses yields no key. See [HMACCookieVerifier].
	Verify func(value string) (id string, ok bool)
}

// Identify returns the key of r's session cookie: the cookie's value, or
// the id Verify returns for it. It reports false when the cookie is absent
// or empty, when Verify refuses it or returns an empty id, or when c has no
// Name. Keys longer than [MaxCookieKeyBytes] are hashed. When the Cookie
// header holds the name several times, the first well-formed one counts, as
// with http.Request.Cookie; only the first 64 KiB of Cookie headers are
// read.
func (c *Cookie) Identify(r *http.Request) (keys.Key, bool) {
	if c == nil || r == nil || !isToken(c.Name) {
		return keys.Key{}, false
	}
	id, ok := cookieValue(r.Header, c.Name)
	if !ok || id == "" {
		return keys.Key{}, false
	}
	if c.Verify != nil {
		if id, ok = c.Verify(id); !ok || id == "" {
			return keys.Key{}, false
		}
	}
	return keys.BoundedString(id), true
}

// Present reports whether r carries a well-formed, non-empty cookie
// c.Name, whether or not Verify accepts it: with Identify, it tells a
// cookie that failed verification (an offence, for penalties) from an
// absent one.
func (c *Cookie) Present(r *http.Request) bool {
	if c == nil || r == nil || !isToken(c.Name) {
		return false
	}
	v, ok := cookieValue(r.Header, c.Name)
	return ok && v != ""
}

// cookieValue returns the value of the first well-formed cookie called name
// in h, parsed as net/http parses Cookie headers (quotes stripped, pairs
// with invalid bytes skipped), without allocating.
func cookieValue(h http.Header, name string) (string, bool) {
	budget := maxCookieHeaderBytes
	for _, line := range h["Cookie"] {
		if len(line) > budget {
			return "", false
		}
		budget -= len(line)
		line = trimOWS(line)
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			if part = trimOWS(part); part == "" {
				continue
			}
			n, v, _ := strings.Cut(part, "=")
			if trimOWS(n) != name {
				continue
			}
			if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if validCookieValue(v) {
				return v, true
			}
		}
	}
	return "", false
}

// validCookieValue mirrors net/http: printable ASCII except '"', ';', '\'.
func validCookieValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < 0x20 || b >= 0x7f || b == '"' || b == ';' || b == '\\' {
			return false
		}
	}
	return true
}

// macLen is the length of a base64url (unpadded) HMAC-SHA256.
var macLen = base64.RawURLEncoding.EncodedLen(sha256.Size)

// HMACCookieVerifier returns a [Cookie] Verify function for values of the
// form
//
//	<id>.<base64url(HMAC-SHA256(secret, id))>
//
// (base64url without padding, 43 characters; id is everything before the
// last dot and must not be empty). It returns the id of a value whose MAC
// checks out, comparing in constant time, and refuses everything else.
// [SignHMACCookie] makes such values. The secret is copied; it should be at
// least 32 random bytes, and an empty secret refuses every value. The MAC
// binds only the id: a value does not expire unless the id says so, so
// rotate the secret, or put a session id (not a bare user id) in the
// cookie. The returned function is safe for concurrent use.
func HMACCookieVerifier(secret []byte) func(value string) (id string, ok bool) {
	key := bytes.Clone(secret)
	return func(value string) (string, bool) {
		if len(key) == 0 {
			return "", false
		}
		i := strings.LastIndexByte(value, '.')
		if i <= 0 || len(value)-i-1 != macLen {
			return "", false
		}
		id := value[:i]
		var got [sha256.Size]byte
		n, err := base64.RawURLEncoding.Strict().Decode(got[:], []byte(value[i+1:]))
		if err != nil || n != sha256.Size {
			return "", false
		}
		if !hmac.Equal(got[:], cookieMAC(key, id)) {
			return "", false
		}
		return id, true
	}
}

// SignHMACCookie returns the cookie value for id that
// [HMACCookieVerifier] (with the same secret) accepts.
func SignHMACCookie(secret []byte, id string) string {
	return id + "." + base64.RawURLEncoding.EncodeToString(cookieMAC(secret, id))
}

func cookieMAC(secret []byte, id string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(id))
	return m.Sum(nil)
}
