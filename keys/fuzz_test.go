package keys

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// FuzzResolve feeds arbitrary peer addresses and forwarding headers to
// resolvers for each header. Each header input is split at '\n' into header
// instances. Resolve must not panic, and must return either an error or a
// valid, unmapped, zone-free address that is the peer or is written in the
// header.
func FuzzResolve(f *testing.F) {
	for _, s := range [][4]string{
		{"10.0.0.1:1234", "6.6.6.6, 198.51.100.7, 10.0.0.2", `for=6.6.6.6, for="198.51.100.7:80";proto=https, for=10.0.0.2`, "198.51.100.7"},
		{"203.0.113.9:1234", "198.51.100.7", "for=198.51.100.7", "198.51.100.7"},
		{"[2001:db8:ffff::1%eth0]:443", "[2001:db8::1]:80,fe80::1%eth0", `for="[2001:db8:cafe::17]:4711"`, "[::ffff:198.51.100.7]:1"},
		{"[::ffff:10.0.0.1]:1", "::ffff:198.51.100.7\n10.0.0.3", "for=unknown\nfor=_hidden;by=10.0.0.1", "nope"},
		{"10.0.0.1", "198.51.100.7, garbage, 10.0.0.2", `for=198.51.100.7;host="a,b\",c", for=10.0.0.2`, " 10.0.0.9 "},
		{"", "", "", ""},
		{"@", ",,,", `"""`, "%"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	trusted := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
		netip.MustParsePrefix("::ffff:172.16.0.0/108"),
	}
	var resolvers []*ClientIP
	for _, h := range []string{"", "X-Forwarded-For", "Forwarded", "X-Real-IP"} {
		c, err := NewClientIP(trusted, h)
		if err != nil {
			f.Fatal(err)
		}
		resolvers = append(resolvers, c)
	}
	f.Fuzz(func(t *testing.T, remote, xff, fwd, xrealip string) {
		r := &http.Request{RemoteAddr: remote, Header: http.Header{}}
		for name, v := range map[string]string{"X-Forwarded-For": xff, "Forwarded": fwd, "X-Real-Ip": xrealip} {
			r.Header[name] = strings.Split(v, "\n")
		}
		peer, perr := PeerAddr(remote)
		for _, c := range resolvers {
			got, err := c.Resolve(r)
			if (err != nil) != (perr != nil) {
				t.Fatalf("%s: Resolve error %v, PeerAddr error %v", c.header, err, perr)
			}
			if err != nil {
				continue
			}
			if !got.IsValid() || got.Is4In6() || got.Zone() != "" {
				t.Fatalf("%s: Resolve = %#v: not a valid, unmapped, zone-free address", c.header, got)
			}
			if want, ok := referenceResolve(c, peer, r.Header[c.header]); ok && got != want {
				t.Fatalf("%s: Resolve = %v, reference = %v", c.header, got, want)
			}
			if got == peer {
				continue
			}
			if !c.trusts(peer) {
				t.Fatalf("%s: untrusted peer %v, but Resolve = %v", c.header, peer, got)
			}
			if in := r.Header.Get(c.header); c.header == "" || !writtenIn(got, strings.Join(r.Header[c.header], ",")) {
				t.Fatalf("%s: Resolve = %v, which is neither the peer %v nor in the header %q", c.header, got, peer, in)
			}
		}
	})
}

// referenceResolve is a plain reading of Resolve's rules, splitting the
// whole header first: a check on the right-to-left walk. ok is false for
// inputs it does not judge: past the byte bound, or Forwarded values with
// quoted strings, where a plain split is not the right reading.
func referenceResolve(c *ClientIP, peer netip.Addr, vals []string) (a netip.Addr, ok bool) {
	if !c.trusts(peer) || len(vals) == 0 || c.kind == kindNone {
		return peer, true
	}
	if c.kind == kindXRealIP {
		if a, ok := parseNode(strings.Trim(vals[len(vals)-1], " \t"), false); ok {
			return a, true
		}
		return peer, true
	}
	total := 0
	var entries []string
	for _, v := range vals {
		total += len(v)
		if c.kind == kindForwarded && strings.Contains(v, `"`) {
			return a, false
		}
		for _, e := range strings.Split(v, ",") {
			if e = strings.Trim(e, " \t"); e != "" {
				entries = append(entries, e)
			}
		}
	}
	if total > MaxForwardedBytes {
		return a, false
	}
	client := peer
	for i, n := len(entries)-1, 0; i >= 0 && n < MaxForwardedEntries; i, n = i-1, n+1 {
		var ok bool
		if c.kind == kindForwarded {
			a, ok = parseForwardedElement(entries[i])
		} else {
			a, ok = parseNode(entries[i], false)
		}
		if !ok {
			break
		}
		if !c.trusts(a) {
			return a, true
		}
		client = a
	}
	return client, true
}

// writtenIn reports whether a is written in s: as a run of address
// characters, possibly followed by ":port".
func writtenIn(a netip.Addr, s string) bool {
	isAddrChar := func(c byte) bool {
		return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.'
	}
	for i := 0; i < len(s); {
		if !isAddrChar(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isAddrChar(s[j]) {
			j++
		}
		run := s[i:j]
		cands := []string{run}
		if k := strings.LastIndexByte(run, ':'); k >= 0 {
			cands = append(cands, run[:k])
		}
		for _, c := range cands {
			if b, err := netip.ParseAddr(c); err == nil && Normalize(b) == a {
				return true
			}
		}
		i = j
	}
	return false
}

// FuzzIPv4Prefix checks the IPv4 fast path against netip: whatever it
// accepts, netip.ParseAddr must accept as the same IPv4 address.
func FuzzIPv4Prefix(f *testing.F) {
	for _, s := range []string{"10.0.0.1:4000", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3.4567", "1.2.3", "0.0.0.0:0", "1.2.3.4.5", "::1", "1.2.3.04"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, n, ok := parseIPv4Prefix(s)
		if !ok {
			return
		}
		if n > len(s) {
			t.Fatalf("%q: used %d bytes of %d", s, n, len(s))
		}
		want, err := netip.ParseAddr(s[:n])
		if err != nil || want != a || !a.Is4() {
			t.Fatalf("%q: fast path %v (%d bytes), netip %v %v", s, a, n, want, err)
		}
	})
}
