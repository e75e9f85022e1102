package keys

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// testTrusted are the proxy ranges of the table tests. The last one is an
// IPv4-mapped IPv6 prefix that must be folded to 172.16.0.0/12.
var testTrusted = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("2001:db8:ffff::/48"),
	netip.MustParsePrefix("::ffff:172.16.0.0/108"),
}

func newRequest(remote, header string, values ...string) *http.Request {
	r := &http.Request{RemoteAddr: remote, Header: http.Header{}}
	for _, v := range values {
		r.Header.Add(header, v)
	}
	return r
}

type resolveCase struct {
	name   string
	remote string
	values []string // instances of the resolver's header
	want   string
}

func runResolve(t *testing.T, header string, cases []resolveCase) {
	t.Helper()
	c, err := NewClientIP(testTrusted, header)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRequest(tc.remote, header, tc.values...)
			got, err := c.Resolve(r)
			if err != nil {
				t.Fatalf("Resolve(%q, %q) error: %v", tc.remote, tc.values, err)
			}
			want := netip.MustParseAddr(tc.want)
			if got != want {
				t.Errorf("Resolve(%q, %q) = %v, want %v", tc.remote, tc.values, got, want)
			}
			checkNormal(t, got)
		})
	}
}

func checkNormal(t *testing.T, a netip.Addr) {
	t.Helper()
	if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
		t.Errorf("address %v is not valid, unmapped and zone-free", a)
	}
}

func TestResolveXForwardedFor(t *testing.T) {
	runResolve(t, "X-Forwarded-For", []resolveCase{
		{"untrusted peer ignores header", "203.0.113.9:1234", []string{"198.51.100.7"}, "203.0.113.9"},
		{"untrusted peer ignores trusted-looking header", "203.0.113.9:1234", []string{"10.0.0.2"}, "203.0.113.9"},
		{"trusted peer without header", "10.0.0.1:1234", nil, "10.0.0.1"},
		{"trusted peer with empty header", "10.0.0.1:1234", []string{""}, "10.0.0.1"},
		{"one trusted proxy", "10.0.0.1:1234", []string{"198.51.100.7"}, "198.51.100.7"},
		{"two trusted proxies", "10.0.0.1:1234", []string{"198.51.100.7, 10.0.0.2"}, "198.51.100.7"},
		{"three trusted proxies", "10.0.0.1:1234", []string{"198.51.100.7, 10.0.0.3, 10.0.0.2"}, "198.51.100.7"},
		{"spoofed left-most loses", "10.0.0.1:1234", []string{"6.6.6.6, 198.51.100.7, 10.0.0.2"}, "198.51.100.7"},
		{"spoofed trusted left of client loses", "10.0.0.1:1234", []string{"10.9.9.9, 198.51.100.7"}, "198.51.100.7"},
		{"all trusted: left-most", "10.0.0.1:1234", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"garbage in the middle stops", "10.0.0.1:1234", []string{"198.51.100.7, garbage, 10.0.0.2"}, "10.0.0.2"},
		{"unknown right-most gives peer", "10.0.0.1:1234", []string{"198.51.100.7, unknown"}, "10.0.0.1"},
		{"garbage left of client is never read", "10.0.0.1:1234", []string{"garbage, 198.51.100.7"}, "198.51.100.7"},
		{"quoted entry is garbage", "10.0.0.1:1234", []string{`"198.51.100.7"`}, "10.0.0.1"},
		{"IPv4 in brackets is garbage", "10.0.0.1:1234", []string{"[198.51.100.7]:80"}, "10.0.0.1"},
		{"port out of range is garbage", "10.0.0.1:1234", []string{"198.51.100.7:65536"}, "10.0.0.1"},
		{"empty port is garbage", "10.0.0.1:1234", []string{"198.51.100.7:"}, "10.0.0.1"},
		{"two instances", "10.0.0.1:1234", []string{"6.6.6.6, 198.51.100.7", "10.0.0.2"}, "198.51.100.7"},
		{"three instances", "10.0.0.1:1234", []string{"6.6.6.6", "198.51.100.7", "10.0.0.3, 10.0.0.2"}, "198.51.100.7"},
		{"instances in order, not reversed", "10.0.0.1:1234", []string{"198.51.100.7", "198.51.100.8"}, "198.51.100.8"},
		{"empty instance between", "10.0.0.1:1234", []string{"198.51.100.7", "", "10.0.0.2"}, "198.51.100.7"},
		{"empty entries ignored", "10.0.0.1:1234", []string{" ,198.51.100.7,, \t10.0.0.2 , "}, "198.51.100.7"},
		{"no spaces", "10.0.0.1:1234", []string{"198.51.100.7,10.0.0.2"}, "198.51.100.7"},
		{"IPv4 with port", "10.0.0.1:1234", []string{"198.51.100.7:5678, 10.0.0.2:80"}, "198.51.100.7"},
		{"IPv6 with port", "10.0.0.1:1234", []string{"[2001:db8::1]:80"}, "2001:db8::1"},
		{"IPv6 in brackets", "10.0.0.1:1234", []string{"[2001:db8::1]"}, "2001:db8::1"},
		{"bare IPv6", "10.0.0.1:1234", []string{"2001:db8::1, 2001:db8:ffff::2"}, "2001:db8::1"},
		{"IPv6 zone dropped", "10.0.0.1:1234", []string{"fe80::1%eth0"}, "fe80::1"},
		{"IPv6 zone in brackets dropped", "10.0.0.1:1234", []string{"[fe80::1%25eth0]:80"}, "fe80::1"},
		{"zone on IPv4 is garbage", "10.0.0.1:1234", []string{"198.51.100.7%eth0"}, "10.0.0.1"},
		{"mapped in header folded", "10.0.0.1:1234", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
		{"mapped with port folded", "10.0.0.1:1234", []string{"[::ffff:198.51.100.7]:80"}, "198.51.100.7"},
		{"mapped trusted hop skipped", "10.0.0.1:1234", []string{"198.51.100.7, ::ffff:10.0.0.2"}, "198.51.100.7"},
		{"mapped peer is trusted as IPv4", "[::ffff:10.0.0.1]:1234", []string{"198.51.100.7"}, "198.51.100.7"},
		{"mapped untrusted peer folded", "[::ffff:203.0.113.9]:1234", []string{"198.51.100.7"}, "203.0.113.9"},
		{"peer in mapped trusted prefix", "172.16.0.1:1234", []string{"198.51.100.7"}, "198.51.100.7"},
		{"peer outside mapped trusted prefix", "172.32.0.1:1234", []string{"198.51.100.7"}, "172.32.0.1"},
		{"IPv6 trusted peer", "[2001:db8:ffff::1]:443", []string{"2001:db8::7"}, "2001:db8::7"},
		{"IPv6 trusted peer with zone", "[2001:db8:ffff::1%eth0]:443", []string{"2001:db8::7"}, "2001:db8::7"},
		{"IPv6 untrusted peer with zone", "[fe80::1%eth0]:1234", []string{"198.51.100.7"}, "fe80::1"},
		{"bare peer address", "10.0.0.1", []string{"198.51.100.7"}, "198.51.100.7"},
	})
}

func TestResolveForwarded(t *testing.T) {
	runResolve(t, "Forwarded", []resolveCase{
		{"untrusted peer ignores header", "203.0.113.9:1234", []string{"for=198.51.100.7"}, "203.0.113.9"},
		{"one hop", "10.0.0.1:1234", []string{"for=198.51.100.7"}, "198.51.100.7"},
		{"quoted", "10.0.0.1:1234", []string{`for="198.51.100.7"`}, "198.51.100.7"},
		{"quoted IPv4 with port", "10.0.0.1:1234", []string{`for="198.51.100.7:47011"`}, "198.51.100.7"},
		{"RFC 7239 IPv6 example", "10.0.0.1:1234", []string{`For="[2001:db8:cafe::17]:4711"`}, "2001:db8:cafe::17"},
		{"IPv6 without port", "10.0.0.1:1234", []string{`for="[2001:db8:cafe::17]"`}, "2001:db8:cafe::17"},
		{"unquoted brackets tolerated", "10.0.0.1:1234", []string{`for=[2001:db8:cafe::17]:4711`}, "2001:db8:cafe::17"},
		{"obfuscated port", "10.0.0.1:1234", []string{`for="[2001:db8::1]:_p1"`}, "2001:db8::1"},
		{"parameter name case", "10.0.0.1:1234", []string{`FOR=198.51.100.7`}, "198.51.100.7"},
		{"other parameters", "10.0.0.1:1234", []string{`proto=https;For="198.51.100.7:80";by=10.0.0.1`}, "198.51.100.7"},
		{"spaces tolerated", "10.0.0.1:1234", []string{` for = 198.51.100.7 ; proto=https `}, "198.51.100.7"},
		{"empty pairs tolerated", "10.0.0.1:1234", []string{`;for=198.51.100.7;;proto=https;`}, "198.51.100.7"},
		{"two hops", "10.0.0.1:1234", []string{`for=198.51.100.7, for=10.0.0.2`}, "198.51.100.7"},
		{"spoofed left-most loses", "10.0.0.1:1234", []string{`for=6.6.6.6, for=198.51.100.7;proto=http, for=10.0.0.2`}, "198.51.100.7"},
		{"all trusted", "10.0.0.1:1234", []string{`for=10.0.0.3, for=10.0.0.2`}, "10.0.0.3"},
		{"two instances", "10.0.0.1:1234", []string{`for=6.6.6.6`, `for=198.51.100.7;proto=http`}, "198.51.100.7"},
		{"comma inside quotes", "10.0.0.1:1234", []string{`for=198.51.100.7;host="a,b"`}, "198.51.100.7"},
		{"escaped quote inside quotes", "10.0.0.1:1234", []string{`for=198.51.100.7;ext="x\",y\\"`}, "198.51.100.7"},
		{"unknown gives peer", "10.0.0.1:1234", []string{`for=198.51.100.7, for=unknown`}, "10.0.0.1"},
		{"quoted unknown gives peer", "10.0.0.1:1234", []string{`for="UNKNOWN"`}, "10.0.0.1"},
		{"obfuscated gives peer", "10.0.0.1:1234", []string{`for=198.51.100.7, for=_hidden`}, "10.0.0.1"},
		{"obfuscated in the middle stops", "10.0.0.1:1234", []string{`for=198.51.100.7, for="_gazonk", for=10.0.0.2`}, "10.0.0.2"},
		{"element without for is garbage", "10.0.0.1:1234", []string{`for=198.51.100.7, proto=https`}, "10.0.0.1"},
		{"duplicate for is garbage", "10.0.0.1:1234", []string{`for=198.51.100.7;for=198.51.100.8`}, "10.0.0.1"},
		{"pair without value is garbage", "10.0.0.1:1234", []string{`for=198.51.100.7;secure`}, "10.0.0.1"},
		{"empty for is garbage", "10.0.0.1:1234", []string{`for=`}, "10.0.0.1"},
		{"unterminated quote is garbage", "10.0.0.1:1234", []string{`for="198.51.100.7`}, "10.0.0.1"},
		{"junk after quoted value is garbage", "10.0.0.1:1234", []string{`for="198.51.100.7"x`}, "10.0.0.1"},
		{"escaped node is garbage", "10.0.0.1:1234", []string{`for="198.51.100\.7"`}, "10.0.0.1"},
		{"obfuscated port on IPv4 is accepted", "10.0.0.1:1234", []string{`for="198.51.100.7:_x-1"`}, "198.51.100.7"},
		{"bad obfuscated port is garbage", "10.0.0.1:1234", []string{`for="198.51.100.7:_"`}, "10.0.0.1"},
		{"mapped folded", "10.0.0.1:1234", []string{`for="[::ffff:198.51.100.7]:80"`}, "198.51.100.7"},
		{"zone dropped", "10.0.0.1:1234", []string{`for="[fe80::1%eth0]"`}, "fe80::1"},
		{"X-Forwarded-For syntax is garbage", "10.0.0.1:1234", []string{`198.51.100.7`}, "10.0.0.1"},
	})
}

func TestResolveXRealIP(t *testing.T) {
	runResolve(t, "X-Real-IP", []resolveCase{
		{"untrusted peer ignores header", "203.0.113.9:1234", []string{"198.51.100.7"}, "203.0.113.9"},
		{"trusted peer", "10.0.0.1:1234", []string{"198.51.100.7"}, "198.51.100.7"},
		{"spaces trimmed", "10.0.0.1:1234", []string{" 198.51.100.7\t"}, "198.51.100.7"},
		{"trusted value is still the client", "10.0.0.1:1234", []string{"10.0.0.9"}, "10.0.0.9"},
		{"last instance wins", "10.0.0.1:1234", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},
		{"invalid last instance gives peer", "10.0.0.1:1234", []string{"198.51.100.7", "nope"}, "10.0.0.1"},
		{"list is invalid", "10.0.0.1:1234", []string{"6.6.6.6, 198.51.100.7"}, "10.0.0.1"},
		{"empty gives peer", "10.0.0.1:1234", []string{""}, "10.0.0.1"},
		{"port dropped", "10.0.0.1:1234", []string{"198.51.100.7:80"}, "198.51.100.7"},
		{"IPv6", "10.0.0.1:1234", []string{"2001:db8::1"}, "2001:db8::1"},
		{"mapped folded", "10.0.0.1:1234", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
		{"zone dropped", "10.0.0.1:1234", []string{"fe80::1%eth0"}, "fe80::1"},
		{"huge zone dropped", "10.0.0.1:1234", []string{"fe80::1%" + strings.Repeat("z", 1<<20)}, "fe80::1"},
	})
}

func TestResolveNoHeader(t *testing.T) {
	c, err := NewClientIP(testTrusted, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip"} {
		r := newRequest("10.0.0.1:1234", h, "198.51.100.7")
		got, err := c.Resolve(r)
		if want := netip.MustParseAddr("10.0.0.1"); err != nil || got != want {
			t.Errorf("header %s: Resolve = %v, %v; want %v, nil", h, got, err, want)
		}
	}
}

func TestResolveZeroAndNil(t *testing.T) {
	r := newRequest("10.0.0.1:1234", "X-Forwarded-For", "198.51.100.7")
	want := netip.MustParseAddr("10.0.0.1")
	var zero ClientIP
	if got, err := zero.Resolve(r); err != nil || got != want {
		t.Errorf("zero ClientIP: Resolve = %v, %v; want %v, nil", got, err, want)
	}
	var nilc *ClientIP
	if got, err := nilc.Resolve(r); err != nil || got != want {
		t.Errorf("nil *ClientIP: Resolve = %v, %v; want %v, nil", got, err, want)
	}
	if _, err := zero.Resolve(nil); !errors.Is(err, ErrNoClientIP) {
		t.Errorf("Resolve(nil) error = %v, want ErrNoClientIP", err)
	}
}

func TestResolveBadRemoteAddr(t *testing.T) {
	c, err := NewClientIP(testTrusted, "X-Forwarded-For")
	if err != nil {
		t.Fatal(err)
	}
	for _, remote := range []string{
		"", "@", "localhost:80", "198.51.100.7:port", "198.51.100.7:70000",
		"[::1", "[::1]x", "[198.51.100.7]:80", "::1]:80", "198.51.100.7%eth0:80",
		"fe80::1%", strings.Repeat("1", 1<<16),
	} {
		name := remote
		if len(name) > 20 {
			name = name[:20]
		}
		t.Run(name, func(t *testing.T) {
			r := newRequest(remote, "X-Forwarded-For", "198.51.100.7")
			got, err := c.Resolve(r)
			if !errors.Is(err, ErrNoClientIP) {
				t.Fatalf("Resolve(%q) = %v, %v; want ErrNoClientIP", clip(remote), got, err)
			}
			if !strings.HasPrefix(err.Error(), "keys: ") {
				t.Errorf("error %q does not start with %q", err, "keys: ")
			}
			if len(err.Error()) > 200 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestPeerAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.1:1234", "192.0.2.1"},
		{"192.0.2.1", "192.0.2.1"},
		{"[2001:db8::1]:1234", "2001:db8::1"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"[fe80::1%eth0]:1234", "fe80::1"},
		{"fe80::1%eth0", "fe80::1"},
		{"[::ffff:192.0.2.1]:1234", "192.0.2.1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
	} {
		got, err := PeerAddr(tc.in)
		if want := netip.MustParseAddr(tc.want); err != nil || got != want {
			t.Errorf("PeerAddr(%q) = %v, %v; want %v, nil", tc.in, got, err, want)
		}
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"fe80::1%eth0", "fe80::1"},
		{"2001:db8::1", "2001:db8::1"},
	} {
		got := Normalize(netip.MustParseAddr(tc.in))
		if want := netip.MustParseAddr(tc.want); got != want {
			t.Errorf("Normalize(%s) = %v, want %v", tc.in, got, want)
		}
	}
	if got := Normalize(netip.Addr{}); got.IsValid() {
		t.Errorf("Normalize(zero) = %v, want the zero Addr", got)
	}
}

func TestNewClientIP(t *testing.T) {
	for _, tc := range []struct {
		name, header, want string
	}{
		{"none", "", ""},
		{"xff", "X-Forwarded-For", "X-Forwarded-For"},
		{"xff lower case", "x-forwarded-for", "X-Forwarded-For"},
		{"forwarded upper case", "FORWARDED", "Forwarded"},
		{"x-real-ip", "X-Real-IP", "X-Real-Ip"},
		{"x-real-ip canonical", "X-Real-Ip", "X-Real-Ip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClientIP(nil, tc.header)
			if err != nil {
				t.Fatalf("NewClientIP(nil, %q) error: %v", tc.header, err)
			}
			if c.header != tc.want {
				t.Errorf("NewClientIP(nil, %q) reads %q, want %q", tc.header, c.header, tc.want)
			}
		})
	}
	for _, h := range []string{"X-Client-IP", "True-Client-IP", " X-Forwarded-For", "X-Forwarded-For,", "CF-Connecting-IP"} {
		if _, err := NewClientIP(nil, h); err == nil || !strings.HasPrefix(err.Error(), "keys: ") {
			t.Errorf("NewClientIP(nil, %q) error = %v, want a keys: error", h, err)
		}
	}
	if _, err := NewClientIP([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), {}}, "Forwarded"); err == nil || !strings.HasPrefix(err.Error(), "keys: ") {
		t.Errorf("NewClientIP with a zero prefix: error = %v, want a keys: error", err)
	}
}

func TestNewClientIPNormalisesPrefixes(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.1.2.3/8"),
		netip.MustParsePrefix("::ffff:172.16.9.9/108"),
		netip.MustParsePrefix("::ffff:0:0/96"),
		netip.MustParsePrefix("2001:db8::1/32"),
		netip.MustParsePrefix("::/0"),
	}
	saved := append([]netip.Prefix(nil), in...)
	c, err := NewClientIP(in, "X-Forwarded-For")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "172.16.0.0/12", "0.0.0.0/0", "2001:db8::/32", "::/0"}
	if len(c.trusted) != len(want) {
		t.Fatalf("got %d prefixes, want %d", len(c.trusted), len(want))
	}
	for i, p := range c.trusted {
		if p != netip.MustParsePrefix(want[i]) {
			t.Errorf("prefix %d = %v, want %v", i, p, want[i])
		}
	}
	// The caller's slice is copied, not changed and not aliased.
	in[0] = netip.MustParsePrefix("192.0.2.0/24")
	if c.trusted[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("ClientIP aliases the caller's slice")
	}
	for i := range saved[1:] {
		if in[i+1] != saved[i+1] {
			t.Errorf("NewClientIP changed the caller's prefix %d", i+1)
		}
	}
}

// TestIPv6PrefixDoesNotTrustIPv4 guards the documented rule that only IPv4
// (or IPv4-mapped, folded) prefixes match IPv4 peers.
func TestIPv6PrefixDoesNotTrustIPv4(t *testing.T) {
	c, err := NewClientIP([]netip.Prefix{netip.MustParsePrefix("::/0")}, "X-Forwarded-For")
	if err != nil {
		t.Fatal(err)
	}
	for _, remote := range []string{"10.0.0.1:1", "[::ffff:10.0.0.1]:1"} {
		got, _ := c.Resolve(newRequest(remote, "X-Forwarded-For", "198.51.100.7"))
		if want := netip.MustParseAddr("10.0.0.1"); got != want {
			t.Errorf("Resolve(%q) = %v, want %v", remote, got, want)
		}
	}
}

// TestResolveBounds guards the bounds on header work: huge and hostile
// headers are read from the right only, never past MaxForwardedEntries
// entries or MaxForwardedBytes bytes, without allocating.
func TestResolveBounds(t *testing.T) {
	const mib = 1 << 20
	pad := func(client string, total int) string {
		// client, then one trusted entry padded with spaces so that the
		// whole value is total bytes long.
		return client + "," + strings.Repeat(" ", total-len(client)-len(",10.0.0.3")) + "10.0.0.3"
	}
	entries := func(client string, trusted int) string {
		return client + strings.Repeat(", 10.0.0.3", trusted)
	}
	for _, tc := range []struct {
		name   string
		header string
		values []string
		want   string
	}{
		{"1 MiB of addresses, client at the right", "X-Forwarded-For",
			[]string{strings.Repeat("6.6.6.6, ", mib/9) + "198.51.100.7, 10.0.0.2"}, "198.51.100.7"},
		{"1 MiB of trusted addresses", "X-Forwarded-For",
			[]string{strings.Repeat("10.0.0.3,", mib/9) + "10.0.0.2"}, "10.0.0.3"},
		{"1 MiB of commas", "X-Forwarded-For",
			[]string{strings.Repeat(",", mib)}, "10.0.0.1"},
		{"1 MiB of commas and spaces, client at the left", "X-Forwarded-For",
			[]string{"198.51.100.7" + strings.Repeat(", ", mib)}, "10.0.0.1"},
		{"1 MiB single entry", "X-Forwarded-For",
			[]string{strings.Repeat("1", mib)}, "10.0.0.1"},
		{"1 MiB zone", "X-Forwarded-For",
			[]string{"fe80::1%" + strings.Repeat("z", mib)}, "10.0.0.1"},
		{"1000 instances", "X-Forwarded-For",
			append(strings.Split(strings.Repeat("10.0.0.3 ", 999), " "), "10.0.0.2"), "10.0.0.3"},
		{"client at entry 64", "X-Forwarded-For",
			[]string{entries("198.51.100.7", MaxForwardedEntries-1)}, "198.51.100.7"},
		{"client at entry 65 is past the bound", "X-Forwarded-For",
			[]string{entries("198.51.100.7", MaxForwardedEntries)}, "10.0.0.3"},
		{"client ends exactly at the byte bound", "X-Forwarded-For",
			[]string{pad("198.51.100.7", MaxForwardedBytes)}, "198.51.100.7"},
		{"client cut by the byte bound is not parsed", "X-Forwarded-For",
			[]string{pad("198.51.100.7", MaxForwardedBytes+1)}, "10.0.0.3"},
		{"byte bound summed over instances", "X-Forwarded-For",
			[]string{"198.51.100.7", strings.Repeat(" ", MaxForwardedBytes-len("10.0.0.3")) + "10.0.0.3"}, "10.0.0.3"},
		{"byte bound with room for the next instance", "X-Forwarded-For",
			[]string{"198.51.100.7", strings.Repeat(" ", MaxForwardedBytes-len("10.0.0.3198.51.100.7")) + "10.0.0.3"}, "198.51.100.7"},
		{"Forwarded: 1 MiB of elements, client at the right", "Forwarded",
			[]string{strings.Repeat("for=6.6.6.6, ", mib/13) + "for=198.51.100.7"}, "198.51.100.7"},
		{"Forwarded: 1 MiB of trusted elements", "Forwarded",
			[]string{strings.Repeat("for=10.0.0.3,", mib/13) + "for=10.0.0.2"}, "10.0.0.3"},
		{"Forwarded: 1 MiB of quotes", "Forwarded",
			[]string{strings.Repeat(`"`, mib)}, "10.0.0.1"},
		{"Forwarded: 1 MiB of backslashes and quotes", "Forwarded",
			[]string{strings.Repeat(`\\\"`, mib/4) + `", for=10.0.0.2`}, "10.0.0.2"},
		{"Forwarded: 1 MiB quoted string", "Forwarded",
			[]string{`for=198.51.100.7;x="` + strings.Repeat("a,", mib/2) + `"`}, "10.0.0.1"},
		{"Forwarded: client at entry 65 is past the bound", "Forwarded",
			[]string{"for=198.51.100.7" + strings.Repeat(", for=10.0.0.3", MaxForwardedEntries)}, "10.0.0.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClientIP(testTrusted, tc.header)
			if err != nil {
				t.Fatal(err)
			}
			r := newRequest("10.0.0.1:1234", tc.header, tc.values...)
			var got netip.Addr
			allocs := testing.AllocsPerRun(10, func() {
				got, err = c.Resolve(r)
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.MustParseAddr(tc.want); got != want {
				t.Errorf("Resolve = %v, want %v", got, want)
			}
			if allocs > 0 {
				t.Errorf("Resolve allocated %v times, want 0", allocs)
			}
		})
	}
}
