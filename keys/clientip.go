package keys

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// Bounds on the work Resolve does on a forwarding header. Resolve reads a
// list header from its right end only, so a client that sends a huge or
// hostile header costs at most this much, whatever its size. When a bound is
// reached before the client address is found, Resolve stops there as it does
// at garbage: it returns the last trusted hop it reached (see Resolve).
const (
	// MaxForwardedEntries is the number of non-empty list entries of an
	// X-Forwarded-For or Forwarded header that Resolve examines, counted
	// from the right.
	MaxForwardedEntries = 64

	// MaxForwardedBytes is the number of header bytes that Resolve scans,
	// counted from the right end of the last header instance and summed
	// over instances. An entry that is cut by this bound is not parsed.
	MaxForwardedBytes = 8 << 10
)

// ErrNoClientIP is wrapped by the errors of PeerAddr and ClientIP.Resolve
// when the request's peer address cannot be parsed (for example a request
// that came over a Unix socket, or a RemoteAddr left empty by a test).
var ErrNoClientIP = errors.New("keys: no client IP")

// The forwarding headers a ClientIP can read, in canonical form.
const (
	headerXFF     = "X-Forwarded-For"
	headerFwd     = "Forwarded"
	headerXRealIP = "X-Real-Ip" // http.CanonicalHeaderKey("X-Real-IP")
)

// maxErrInputLen bounds how much of a bad input an error message quotes.
const maxErrInputLen = 64

type headerKind uint8

const (
	kindNone headerKind = iota
	kindXFF
	kindForwarded
	kindXRealIP
)

// ClientIP resolves the client address of a request: the peer address, or,
// when the peer is a trusted proxy, the address that a forwarding header
// names. Build it with NewClientIP.
//
// A ClientIP is immutable and safe for concurrent use. The zero value (and a
// nil *ClientIP) trusts no proxy and reads no header: Resolve returns the
// peer address.
type ClientIP struct {
	trusted []netip.Prefix // normalised: masked, IPv4-mapped folded to IPv4
	header  string         // canonical header key, "" for none
	kind    headerKind
}

// NewClientIP compiles a client-address resolver. trusted lists the address
// ranges of the proxies in front of the server; header names the forwarding
// header those proxies write: "X-Forwarded-For", "Forwarded" (RFC 7239) or
// "X-Real-IP", in any letter case, or "" to ignore forwarding headers and use
// only the peer address. Any other header is an error.
//
// The prefixes are copied and normalised: host bits are masked off, and an
// IPv4-mapped IPv6 prefix of /96 or longer (::ffff:10.0.0.0/104) is folded to
// the IPv4 prefix it denotes (10.0.0.0/8). Because every address is folded
// to IPv4 before it is matched, other IPv6 prefixes (even ::/0) never match
// an IPv4 address: list IPv4 proxy ranges as IPv4. An invalid (zero) prefix
// is an error.
func NewClientIP(trusted []netip.Prefix, header string) (*ClientIP, error) {
	c := &ClientIP{}
	switch {
	case header == "":
		c.kind = kindNone
	case strings.EqualFold(header, headerXFF):
		c.kind, c.header = kindXFF, headerXFF
	case strings.EqualFold(header, headerFwd):
		c.kind, c.header = kindForwarded, headerFwd
	case strings.EqualFold(header, "X-Real-IP"):
		c.kind, c.header = kindXRealIP, headerXRealIP
	default:
		return nil, fmt.Errorf("keys: unsupported client IP header %q: want X-Forwarded-For, Forwarded, X-Real-IP or none", clip(header))
	}
	if len(trusted) > 0 {
		c.trusted = make([]netip.Prefix, 0, len(trusted))
	}
	for i, p := range trusted {
		if !p.IsValid() {
			return nil, fmt.Errorf("keys: trusted proxy %d: invalid prefix %q", i, p.String())
		}
		p = p.Masked()
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		c.trusted = append(c.trusted, p)
	}
	return c, nil
}

// trusts reports whether a (normalised) lies in a trusted prefix.
func (c *ClientIP) trusts(a netip.Addr) bool {
	for _, p := range c.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Resolve returns the client address of r. The result is always valid,
// unmapped (IPv4-mapped IPv6 is folded to IPv4) and zone-free; the error,
// which wraps ErrNoClientIP, comes only from an unparseable r.RemoteAddr
// (or a nil r).
//
// The peer address (r.RemoteAddr) is the client unless it lies in a trusted
// prefix: a forwarding header from any other peer is the client's own word
// and is ignored. When the peer is trusted:
//
//   - X-Forwarded-For and Forwarded are read as one list, the header
//     instances combined in order (RFC 9110, section 5.3), from right to
//     left. Trusted addresses are skipped, and the first untrusted address
//     is the client. If every address is trusted, the left-most one is the
//     client. Empty list entries are ignored.
//   - If the walk meets an entry that is not an address (garbage, "unknown",
//     an obfuscated RFC 7239 identifier like "_hidden", a Forwarded element
//     without for=), or reaches MaxForwardedEntries or MaxForwardedBytes, it
//     stops and returns the last trusted hop it reached: the peer itself if
//     none. Every entry read so far was written by a trusted proxy, so such
//     an entry means a trusted proxy could not tell who its own peer was;
//     anything further left was written by a party that is not known to be
//     trusted, and a client chooses it freely. Stopping never lets a client
//     pick its address; at worst it aggregates clients behind that proxy.
//   - X-Real-IP names one address; with several instances the last one
//     counts. If it is not a valid address the peer is the client.
//
// Entries may carry a port, which is dropped: "192.0.2.1:8080",
// "[2001:db8::1]:8080" (IPv6 with a port must be in brackets). Forwarded
// values may be quoted: for="[2001:db8:cafe::17]:4711".
func (c *ClientIP) Resolve(r *http.Request) (netip.Addr, error) {
	if r == nil {
		return netip.Addr{}, fmt.Errorf("keys: nil request: %w", ErrNoClientIP)
	}
	peer, err := PeerAddr(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, err
	}
	if c == nil || c.kind == kindNone || !c.trusts(peer) {
		return peer, nil
	}
	vals := r.Header[c.header]
	if len(vals) == 0 {
		return peer, nil
	}
	if c.kind == kindXRealIP {
		if a, ok := parseNode(trimOWS(vals[len(vals)-1]), false); ok {
			return a, nil
		}
		return peer, nil
	}
	w := listWalker{vals: vals, i: len(vals), budget: MaxForwardedBytes, quotes: c.kind == kindForwarded}
	client := peer
	for n := 0; ; n++ {
		e, more := w.next()
		if !more || n == MaxForwardedEntries {
			// The left end of the list, or a bound: either way client
			// is the left-most trusted hop we reached.
			return client, nil
		}
		var a netip.Addr
		var ok bool
		if c.kind == kindForwarded {
			a, ok = parseForwardedElement(e)
		} else {
			a, ok = parseNode(e, false)
		}
		if !ok {
			return client, nil // garbage written by a trusted proxy: stop
		}
		if !c.trusts(a) {
			return a, nil
		}
		client = a
	}
}

// PeerAddr parses a peer address as found in http.Request.RemoteAddr:
// "host:port" ("192.0.2.1:1234", "[2001:db8::1]:1234",
// "[fe80::1%eth0]:1234") or a bare address. The result is normalised (see
// Normalize). An unparseable address is an error wrapping ErrNoClientIP.
func PeerAddr(remoteAddr string) (netip.Addr, error) {
	a, ok := parseNode(remoteAddr, false)
	if !ok {
		return netip.Addr{}, fmt.Errorf("keys: peer address %q: %w", clip(remoteAddr), ErrNoClientIP)
	}
	return a, nil
}

// Normalize folds an IPv4-mapped IPv6 address (::ffff:192.0.2.1) to IPv4
// and drops an IPv6 zone, so that one client has one address.
func Normalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > maxErrInputLen {
		return s[:maxErrInputLen] + "..."
	}
	return s
}

// listWalker yields the non-empty entries of a comma-separated header list
// from right to left, across header instances (vals[len-1] is the right-most
// instance), within a byte budget. With quotes set, commas inside RFC 9110
// quoted strings do not separate entries.
type listWalker struct {
	vals   []string
	cur    string // unread left part of vals[i]
	i      int
	budget int
	quotes bool
}

// next returns the next entry to the left, trimmed of whitespace. more is
// false at the left end of the list and when the byte budget runs out
// before an entry is complete.
func (w *listWalker) next() (entry string, more bool) {
	for {
		for w.cur == "" {
			if w.i == 0 {
				return "", false
			}
			w.i--
			w.cur = w.vals[w.i]
		}
		s := w.cur
		lo := 0
		if len(s) > w.budget {
			lo = len(s) - w.budget
		}
		j := lastSeparator(s, lo, w.quotes)
		if j < 0 {
			if lo > 0 {
				w.budget, w.cur, w.i = 0, "", 0
				return "", false // the entry is cut by the budget
			}
			entry, w.cur = s, ""
			w.budget -= len(s)
		} else {
			entry, w.cur = s[j+1:], s[:j]
			w.budget -= len(s) - j
		}
		if entry = trimOWS(entry); entry != "" {
			return entry, true
		}
	}
}

// lastSeparator returns the index of the right-most list comma in s[lo:], or
// -1. With quotes, commas inside quoted strings are skipped; a quoted
// string's backslash escapes are honoured.
func lastSeparator(s string, lo int, quotes bool) int {
	if !quotes {
		if j := strings.LastIndexByte(s[lo:], ','); j >= 0 {
			return lo + j
		}
		return -1
	}
	inQuote := false
	for k := len(s) - 1; k >= lo; k-- {
		switch s[k] {
		case '"':
			if !inQuote {
				inQuote = true
				continue
			}
			// Inside a quoted string read backwards, a quote closes it
			// unless an odd run of backslashes escapes it.
			n := 0
			for m := k - 1; m >= lo && s[m] == '\\'; m-- {
				n++
			}
			if n%2 == 0 {
				inQuote = false
			}
		case ',':
			if !inQuote {
				return k
			}
		}
	}
	return -1
}

// trimOWS trims HTTP optional whitespace (space and horizontal tab).
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseForwardedElement returns the address in the for= parameter of one
// RFC 7239 forwarded-element. A malformed element, one without exactly one
// for= parameter, and a for= value that is not an address ("unknown", an
// obfuscated "_identifier") all give ok == false.
func parseForwardedElement(e string) (a netip.Addr, ok bool) {
	var node string
	found := false
	for {
		e = trimOWS(e)
		if e == "" {
			break
		}
		if e[0] == ';' {
			e = e[1:] // an empty pair
			continue
		}
		// One forwarded-pair: token "=" ( token / quoted-string ).
		eq := strings.IndexByte(e, '=')
		if eq < 0 {
			return a, false
		}
		name := trimOWS(e[:eq])
		if !isToken(name) {
			return a, false
		}
		isFor := strings.EqualFold(name, "for")
		rest := trimOWS(e[eq+1:])
		var val string
		if rest != "" && rest[0] == '"' {
			end, escaped := quotedEnd(rest)
			if end < 0 || escaped && isFor {
				// Unterminated, or a node with a quoted-pair, which a
				// valid node never needs.
				return a, false
			}
			val, rest = rest[1:end], trimOWS(rest[end+1:])
		} else {
			k := strings.IndexByte(rest, ';')
			if k < 0 {
				k = len(rest)
			}
			val, rest = trimOWS(rest[:k]), rest[k:]
			if val == "" || strings.IndexByte(val, '"') >= 0 {
				return a, false
			}
		}
		if rest != "" && rest[0] != ';' {
			return a, false
		}
		e = rest
		if isFor {
			if found {
				return a, false // RFC 7239: a parameter occurs at most once
			}
			node, found = val, true
		}
	}
	if !found || node == "" || node[0] == '_' || strings.EqualFold(node, "unknown") {
		return a, false
	}
	return parseNode(node, true)
}

// quotedEnd returns the index of the quote that closes the quoted string at
// the start of s, or -1, and whether the string holds a quoted-pair.
func quotedEnd(s string) (end int, escaped bool) {
	for k := 1; k < len(s); k++ {
		switch s[k] {
		case '\\':
			escaped = true
			k++
		case '"':
			return k, escaped
		}
	}
	return -1, escaped
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if strings.IndexByte("!#$%&'*+-.^_`|~", c) < 0 {
			return false
		}
	}
	return true
}

// parseNode parses an address with an optional port: "192.0.2.1",
// "192.0.2.1:80", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:80", and
// IPv6 zones "fe80::1%eth0". With obfPort, RFC 7239 obfuscated ports
// ("_p1") are accepted too. The result is normalised.
func parseNode(s string, obfPort bool) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	// The common case, a peer address "a.b.c.d:port", without the general
	// parser; anything else takes the path below.
	if a, n, ok := parseIPv4Prefix(s); ok && n < len(s) && s[n] == ':' && validPort(s[n+1:], obfPort) {
		return a, true
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" && (rest[0] != ':' || !validPort(rest[1:], obfPort)) {
			return netip.Addr{}, false
		}
		a, ok := parseAddr(s[1:end])
		if !ok || !a.Is6() {
			return netip.Addr{}, false // brackets are for IPv6 only
		}
		return Normalize(a), true
	}
	if i := strings.IndexByte(s, ':'); i >= 0 && strings.IndexByte(s[i+1:], ':') < 0 {
		// Exactly one colon: IPv4 with a port.
		a, ok := parseAddr(s[:i])
		if !ok || !a.Is4() || !validPort(s[i+1:], obfPort) {
			return netip.Addr{}, false
		}
		return a, true
	}
	a, ok := parseAddr(s)
	if !ok {
		return netip.Addr{}, false
	}
	return Normalize(a), true
}

// parseAddr parses an address, dropping an IPv6 zone without parsing it
// (netip interns zones, which would let a long zone cost memory).
func parseAddr(s string) (netip.Addr, bool) {
	zoned := false
	if i := strings.IndexByte(s, '%'); i >= 0 {
		if i == len(s)-1 {
			return netip.Addr{}, false // an empty zone
		}
		s, zoned = s[:i], true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || zoned && !a.Is6() {
		return netip.Addr{}, false
	}
	return a, true
}

// validPort reports whether s is a decimal port (0-65535), or, with obf, an
// RFC 7239 obfport: "_" followed by letters, digits, ".", "_" or "-".
func validPort(s string, obf bool) bool {
	if s == "" {
		return false
	}
	if s[0] == '_' {
		if !obf || len(s) == 1 {
			return false
		}
		for i := 1; i < len(s); i++ {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
		return true
	}
	if len(s) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

// parseIPv4Prefix parses a dotted-quad IPv4 address at the start of s, in
// the form netip.ParseAddr accepts (four decimal fields of 0-255, no
// leading zeros), and returns it with the number of bytes it used. It is a
// fast path: false means only that s does not start that way.
func parseIPv4Prefix(s string) (netip.Addr, int, bool) {
	var ip [4]byte
	i := 0
	for f := 0; f < 4; f++ {
		if f > 0 {
			if i >= len(s) || s[i] != '.' {
				return netip.Addr{}, 0, false
			}
			i++
		}
		start, v := i, 0
		for i < len(s) && i-start < 3 && s[i] >= '0' && s[i] <= '9' {
			v = v*10 + int(s[i]-'0')
			i++
		}
		if i == start || v > 255 || i-start > 1 && s[start] == '0' {
			return netip.Addr{}, 0, false
		}
		ip[f] = byte(v)
	}
	if i < len(s) && s[i] >= '0' && s[i] <= '9' {
		return netip.Addr{}, 0, false // a fourth digit in the last field
	}
	return netip.AddrFrom4(ip), i, true
}
