package identity

import (
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// DefaultProtocolPrefix is the Sec-WebSocket-Protocol prefix of the
// "subprotocol" source: a browser offers ["chat", "bearer.<jwt>"].
const DefaultProtocolPrefix = "bearer."

// protocolHeader is the canonical form of Sec-WebSocket-Protocol.
const protocolHeader = "Sec-Websocket-Protocol"

type sourceKind uint8

const (
	sourceHeader sourceKind = iota
	sourceQuery
	sourceCookie
	sourceSubprotocol
)

// source is one parsed entry of JWTConfig.From.
type source struct {
	kind   sourceKind
	name   string // canonical header name, query or cookie name, or protocol prefix
	bearer bool   // header:Authorization: the Bearer scheme is required
	spec   string // canonical spec, reported as Identity.Source
}

// parseSource parses one entry of JWTConfig.From.
func parseSource(spec string) (source, error) {
	kind, name, _ := strings.Cut(strings.TrimSpace(spec), ":")
	switch kind {
	case "header":
		if !isToken(name) {
			return source{}, fmt.Errorf("header source %q: want header:NAME with a valid header name", spec)
		}
		name = textproto.CanonicalMIMEHeaderKey(name)
		return source{kind: sourceHeader, name: name, bearer: name == "Authorization", spec: "header:" + name}, nil
	case "query":
		if name == "" {
			return source{}, fmt.Errorf("query source %q: want query:NAME", spec)
		}
		return source{kind: sourceQuery, name: name, spec: "query:" + name}, nil
	case "cookie":
		if !isToken(name) {
			return source{}, fmt.Errorf("cookie source %q: want cookie:NAME with a valid cookie name", spec)
		}
		return source{kind: sourceCookie, name: name, spec: "cookie:" + name}, nil
	case "subprotocol":
		if name == "" {
			name = DefaultProtocolPrefix
		}
		if !isToken(name) {
			return source{}, fmt.Errorf("subprotocol source %q: the prefix must consist of token characters", spec)
		}
		return source{kind: sourceSubprotocol, name: name, spec: "subprotocol:" + name}, nil
	default:
		return source{}, fmt.Errorf("unknown source %q: want header:NAME, query:NAME, cookie:NAME or subprotocol[:PREFIX]", spec)
	}
}

// extract returns the token this source finds in r, if any. A found token
// longer than limit may be returned raw (undecoded): it is rejected by
// length before anything else looks at it.
func (s *source) extract(r *http.Request, limit int) (string, bool) {
	var tok string
	switch s.kind {
	case sourceHeader:
		v := r.Header[s.name]
		if len(v) == 0 {
			return "", false
		}
		tok = trimOWS(v[0])
		scheme, rest, ok := strings.Cut(tok, " ")
		switch {
		case ok && strings.EqualFold(scheme, "Bearer"):
			tok = trimOWS(rest)
		case s.bearer:
			return "", false
		}
	case sourceQuery:
		if r.URL == nil {
			return "", false
		}
		tok = queryValue(r.URL.RawQuery, s.name, limit)
	case sourceCookie:
		tok, _ = cookieValue(r.Header, s.name)
	case sourceSubprotocol:
		tok = protocolToken(r.Header, s.name)
	}
	return tok, tok != ""
}

// queryValue returns the first value of the query parameter name in raw, as
// url.Values.Get would, without building the map. A value longer than
// limit is returned undecoded.
func queryValue(raw, name string, limit int) string {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if kv == "" || strings.Contains(kv, ";") { // net/url drops these
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if k != name {
			if !needsUnescape(k) {
				continue
			}
			if uk, err := url.QueryUnescape(k); err != nil || uk != name {
				continue
			}
		}
		if len(v) > limit || !needsUnescape(v) {
			return v
		}
		uv, err := url.QueryUnescape(v)
		if err != nil {
			continue // net/url drops a pair with a bad escape
		}
		return uv
	}
	return ""
}

// needsUnescape reports whether a query component holds escapes ('%' or
// '+'); a JWT never does, and IndexByte is much faster than unescaping.
func needsUnescape(s string) bool {
	return strings.IndexByte(s, '%') >= 0 || strings.IndexByte(s, '+') >= 0
}

// protocolToken returns the rest of the first Sec-WebSocket-Protocol entry
// that starts with prefix.
func protocolToken(h http.Header, prefix string) string {
	for _, line := range h[protocolHeader] {
		for line != "" {
			var entry string
			entry, line, _ = strings.Cut(line, ",")
			if entry = trimOWS(entry); strings.HasPrefix(entry, prefix) && len(entry) > len(prefix) {
				return entry[len(prefix):]
			}
		}
	}
	return ""
}

// StripTokenProtocols returns a copy of h without the Sec-WebSocket-Protocol
// entries that start with one of prefixes (DefaultProtocolPrefix when none
// is given); a line left empty is dropped, and the header too when no line
// remains. h is never modified; when it holds no such entry, h itself is
// returned.
//
// A WebSocket guard hands the upgrader a request without these entries, so
// that a token offered as a subprotocol can never be selected and echoed
// back in the response. The application must still offer (and the client
// must still request) a real subprotocol next to the token, such as "chat":
// a browser fails a handshake in which it requested subprotocols and the
// server selected none.
func StripTokenProtocols(h http.Header, prefixes ...string) http.Header {
	if len(prefixes) == 0 {
		prefixes = []string{DefaultProtocolPrefix}
	}
	kept, found := stripProtocols(h[protocolHeader], prefixes)
	if !found {
		return h
	}
	out := h.Clone()
	if len(kept) == 0 {
		delete(out, protocolHeader)
	} else {
		out[protocolHeader] = kept
	}
	return out
}

// stripProtocols returns the Sec-WebSocket-Protocol lines without the
// entries that start with one of prefixes, and whether it found any; a line
// left empty is dropped. When found, kept is non-nil (empty when no entry
// remains).
func stripProtocols(lines, prefixes []string) (kept []string, found bool) {
	carries := func(entry string) bool {
		for _, p := range prefixes {
			if p != "" && strings.HasPrefix(entry, p) {
				return true
			}
		}
		return false
	}
	for _, line := range lines {
		for line != "" && !found {
			var e string
			e, line, _ = strings.Cut(line, ",")
			found = carries(trimOWS(e))
		}
	}
	if !found {
		return nil, false
	}
	kept = make([]string, 0, len(lines))
	for _, line := range lines {
		var entries []string
		for _, e := range strings.Split(line, ",") {
			if e = trimOWS(e); e != "" && !carries(e) {
				entries = append(entries, e)
			}
		}
		if len(entries) > 0 {
			kept = append(kept, strings.Join(entries, ", "))
		}
	}
	return kept, true
}

// trimOWS trims HTTP optional whitespace (and CR, LF, as net/textproto does).
func trimOWS(s string) string {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}
