package ws

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// Spoofing suite over loopback: forged forwarding headers from a peer that
// is not a trusted proxy are keyed to the real peer; through a trusted
// proxy (the test client plays it) zones are dropped, IPv4-mapped
// addresses folded, and garbage or oversized values end at the proxy's
// own address; nothing panics and the server stays up.

// spoofServer is a guarded echo server on a loopback address that reports
// the client address of every admitted connection.
type spoofServer struct {
	*httptest.Server
	store *policy.MemoryStore
	peer  netip.Addr // the loopback address clients connect from
	ips   chan netip.Addr
}

// newSpoofServer listens on loopback (network "tcp4": 127.0.0.1, "tcp6":
// ::1); it skips the test when the address is unavailable.
// slotsOf returns the slots k holds under rule in s.
func slotsOf(s policy.Inspector, rule string, k keys.Key) int {
	for _, kc := range s.TopKeys(rule, 1<<20) {
		if kc.Key == k {
			return kc.Count
		}
	}
	return 0
}

func newSpoofServer(t *testing.T, network, doc string) *spoofServer {
	t.Helper()
	host := "127.0.0.1"
	if network == "tcp6" {
		host = "[::1]"
	}
	ln, err := net.Listen(network, host+":0")
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	ss := &spoofServer{store: policy.NewMemoryStore(), peer: netip.MustParseAddr(strings.Trim(host, "[]")), ips: make(chan netip.Addr, 16)}
	g, err := New(mustPolicy(t, doc), Options{Store: ss.store})
	if err != nil {
		t.Fatal(err)
	}
	ss.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		ss.ips <- c.Decision().ClientIP
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}))
	ss.Listener.Close()
	ss.Listener = ln
	ss.Config.ErrorLog = quietLog()
	ss.Start()
	t.Cleanup(func() {
		ss.Close()
		_ = g.Close()
	})
	return ss
}

func (ss *spoofServer) url() string { return "ws" + strings.TrimPrefix(ss.URL, "http") + "/ws" }

func (ss *spoofServer) dial(h http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: slack}
	return d.Dial(ss.url(), h)
}

// clientIP returns the address the server keyed the last admission by.
func (ss *spoofServer) clientIP(t *testing.T) netip.Addr {
	t.Helper()
	select {
	case a := <-ss.ips:
		return a
	case <-time.After(slack):
		t.Fatal("the server never reported an admitted connection")
		return netip.Addr{}
	}
}

// held asserts that exactly one slot is held, under want, in every rule.
func (ss *spoofServer) held(t *testing.T, want netip.Addr) {
	t.Helper()
	if got := slotsOf(ss.store, "per-ip", keys.IP(want)); got != 1 {
		t.Errorf("per-ip slots under %v = %d, want 1", want, got)
	}
	if st := ss.store.Stats("per-ip"); st.Keys != 1 || st.Connections != 1 {
		t.Errorf("per-ip = %+v, want one key holding one slot", st)
	}
	if got := slotsOf(ss.store, "per-64", keys.Subnet(want, 24, 64)); got != 1 {
		t.Errorf("per-64 slots under %v = %d, want 1", keys.Subnet(want, 24, 64), got)
	}
}

func (ss *spoofServer) drained(t *testing.T) {
	t.Helper()
	eventually(t, "slots released", func() bool {
		a, b := ss.store.Stats("per-ip"), ss.store.Stats("per-64")
		return a.Connections+a.Keys+b.Connections+b.Keys == 0
	})
}

// alive dials without any forwarding header and echoes once.
func (ss *spoofServer) alive(t *testing.T) {
	t.Helper()
	c, _, err := ss.dial(nil)
	if err != nil {
		t.Fatalf("server not answering after the suite: %v", err)
	}
	if got := ss.clientIP(t); got != ss.peer {
		t.Errorf("plain connection keyed to %v, want %v", got, ss.peer)
	}
	echoOnce(t, c)
	c.Close()
	ss.drained(t)
}

// refused asserts that a dial with h gets 429 from rule.
func refused(t *testing.T, ss *spoofServer, h http.Header, rule string) {
	t.Helper()
	c, resp, err := ss.dial(h)
	if err == nil {
		c.Close()
		t.Errorf("second connection admitted (header %s): cap 1 not keyed to the same client", describe(h))
		return
	}
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("second connection: %v, want 429", err)
		return
	}
	var body struct{ Rule, Reason string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if body.Rule != rule || body.Reason != "connections" {
		t.Errorf("refusal body %+v, want rule %s, reason connections", body, rule)
	}
}

// describe shortens a header for messages.
func describe(h http.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			if len(v) > 40 {
				v = fmt.Sprintf("%s...(%d bytes)", v[:40], len(v))
			}
			fmt.Fprintf(&b, "%s: %q; ", k, v)
		}
	}
	return b.String()
}

const spoofRules = `rules:
  - {name: per-ip, key: ip, connections: 1}
  - {name: per-64, key: subnet, ipv4_prefix: 24, ipv6_prefix: 64, connections: 100}
`

const kib = 1 << 10

// forgedHeaders are what a client may write: every one must be ignored
// when the peer is not a trusted proxy.
func forgedHeaders() []http.Header {
	big := strings.Repeat("6.6.6.6, ", 64*kib/9) + "198.51.100.7"
	return []http.Header{
		{"X-Forwarded-For": {"198.51.100.7"}},
		{"X-Forwarded-For": {"6.6.6.6, 10.0.0.1"}},
		{"X-Forwarded-For": {"10.0.0.1"}},
		{"X-Forwarded-For": {"127.0.0.2"}},
		{"X-Forwarded-For": {"1.1.1.1", "2.2.2.2", "3.3.3.3"}},
		{"x-forwarded-for": {"198.51.100.8"}}, // sent in lower case
		{"X-Forwarded-For": {"fe80::1%eth0", "::ffff:198.51.100.7"}},
		{"X-Forwarded-For": {"not-an-ip, ,,, [::1"}},
		{"X-Forwarded-For": {big}},
		{"X-Forwarded-For": {strings.Repeat("x", 64*kib)}},
		{"Forwarded": {"for=198.51.100.7"}},
		{"Forwarded": {`for="[2001:db8::1%eth0]:80"`, "for=10.0.0.1"}},
		{"Forwarded": {`for="unterminated`}},
		{"Forwarded": {strings.Repeat("for=6.6.6.6, ", 64*kib/13) + "for=198.51.100.7"}},
		{"X-Real-Ip": {"198.51.100.7"}},
		{"X-Real-Ip": {"1.1.1.1", "::ffff:10.0.0.1"}},
		{"X-Real-Ip": {"fe80::1%" + strings.Repeat("z", 64*kib)}},
		{"X-Forwarded-For": {"198.51.100.7"}, "Forwarded": {"for=198.51.100.8"}, "X-Real-Ip": {"198.51.100.9"}},
	}
}

// TestSpoofUntrustedPeer: the loopback peer is not a trusted proxy (the
// policy trusts 10.0.0.0/8 only, or nothing): whatever forwarding headers
// a client forges, its connections are keyed to its real address, and a
// cap of 1 refuses its second connection whatever the second one forges.
func TestSpoofUntrustedPeer(t *testing.T) {
	configs := []struct{ name, clientIP string }{
		{"trusts-nothing", ""},
		{"xff-trusts-10/8", "client_ip: {trusted_proxies: [10.0.0.0/8], header: X-Forwarded-For}\n"},
		{"forwarded-trusts-10/8", "client_ip: {trusted_proxies: [10.0.0.0/8], header: Forwarded}\n"},
		{"x-real-ip-trusts-10/8", "client_ip: {trusted_proxies: [10.0.0.0/8], header: X-Real-IP}\n"},
	}
	forged := forgedHeaders()
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, cfg := range configs {
			t.Run(network+"/"+cfg.name, func(t *testing.T) {
				ss := newSpoofServer(t, network, "version: 1\n"+cfg.clientIP+spoofRules)
				for i, h := range forged {
					c, _, err := ss.dial(h)
					if err != nil {
						t.Fatalf("forged %s: %v", describe(h), err)
					}
					if got := ss.clientIP(t); got != ss.peer {
						t.Errorf("forged %s: keyed to %v, want the peer %v", describe(h), got, ss.peer)
					}
					ss.held(t, ss.peer)
					refused(t, ss, forged[(i+1)%len(forged)], "per-ip")
					c.Close()
					ss.drained(t)
				}
				ss.alive(t)
			})
		}
	}
}

// TestSpoofTrustedProxy: the loopback peer is a trusted proxy, so the
// header names the client: the right-most untrusted address, zone dropped,
// IPv4-mapped folded; a value the proxy could not have written (garbage,
// an entry cut by the 8 KiB scan bound) ends the walk at the last trusted
// hop, here the proxy itself.
func TestSpoofTrustedProxy(t *testing.T) {
	hugeZone := strings.Repeat("z", 64*kib)
	type tc struct {
		name string
		vals []string
		want string // "" for the proxy (the peer) itself
	}
	headers := []struct {
		header string
		cases  []tc
	}{
		{"X-Forwarded-For", []tc{
			{"one address", []string{"198.51.100.7"}, "198.51.100.7"},
			{"client-written left-most ignored", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7"},
			{"trusted hop skipped", []string{"198.51.100.7, 10.1.2.3"}, "198.51.100.7"},
			{"instances combined", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},
			{"zone dropped", []string{"fe80::1%eth0"}, "fe80::1"},
			{"bracketed zone with port", []string{"[fe80::1%25eth0]:8080"}, "fe80::1"},
			{"IPv6 keyed by /64", []string{"2001:db8:1:2::5"}, "2001:db8:1:2::5"},
			{"4 KiB zone dropped", []string{"2001:db8:1:2::5%" + hugeZone[:4*kib]}, "2001:db8:1:2::5"},
			{"64 KiB zone cut by the scan bound", []string{"2001:db8:1:2::5%" + hugeZone}, ""},
			{"mapped folded", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
			{"mapped with port folded", []string{"[::ffff:198.51.100.7]:443"}, "198.51.100.7"},
			{"mapped trusted hop skipped", []string{"2001:db8::1%eth0, ::ffff:10.0.0.1"}, "2001:db8::1"},
			{"mapped proxy is the proxy", []string{"::ffff:127.0.0.1"}, "127.0.0.1"},
			{"64 KiB list read from the right", []string{strings.Repeat("6.6.6.6, ", 64*kib/9) + "198.51.100.7"}, "198.51.100.7"},
			{"64 KiB garbage", []string{strings.Repeat("x", 64*kib)}, ""},
			{"900 KiB list read from the right", []string{strings.Repeat("6.6.6.6, ", 900*kib/9) + "198.51.100.7"}, "198.51.100.7"},
			{"garbage left of the client never read", []string{"garbage, 198.51.100.7"}, "198.51.100.7"},
			{"garbage right of the client stops", []string{"198.51.100.7, garbage"}, ""},
			{"unknown", []string{"unknown"}, ""},
			{"empty", []string{""}, ""},
			{"64 instances", strings.Split(strings.Repeat("6.6.6.6,", 63)+"198.51.100.7", ","), "198.51.100.7"},
		}},
		{"Forwarded", []tc{
			{"one address", []string{"for=198.51.100.7"}, "198.51.100.7"},
			{"zone dropped", []string{`for="[2001:db8:cafe::17%eth0]:4711"`}, "2001:db8:cafe::17"},
			{"mapped folded", []string{`for="[::ffff:198.51.100.7]"`}, "198.51.100.7"},
			{"instances combined", []string{"for=6.6.6.6", "for=198.51.100.7;proto=https"}, "198.51.100.7"},
			{"obfuscated", []string{"for=_hidden"}, ""},
			{"unterminated quote", []string{`for="198.51.100.7`}, ""},
			{"64 KiB list read from the right", []string{strings.Repeat("for=6.6.6.6, ", 64*kib/13) + "for=198.51.100.7"}, "198.51.100.7"},
			{"64 KiB zone", []string{`for="[fe80::1%` + hugeZone + `]"`}, ""},
		}},
		{"X-Real-IP", []tc{
			{"one address", []string{"198.51.100.7"}, "198.51.100.7"},
			{"last instance", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},
			{"zone dropped", []string{"fe80::1%eth0"}, "fe80::1"},
			{"64 KiB zone dropped", []string{"fe80::1%" + hugeZone}, "fe80::1"},
			{"mapped folded", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
			{"a list is garbage", []string{"6.6.6.6, 198.51.100.7"}, ""},
			{"64 KiB garbage", []string{strings.Repeat("x", 64*kib)}, ""},
		}},
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, hc := range headers {
			t.Run(network+"/"+hc.header, func(t *testing.T) {
				doc := fmt.Sprintf("version: 1\nclient_ip: {trusted_proxies: [127.0.0.1/32, \"::1/128\", 10.0.0.0/8], header: %s}\n%s", hc.header, spoofRules)
				ss := newSpoofServer(t, network, doc)
				for _, c := range hc.cases {
					want := ss.peer
					if c.want != "" {
						want = netip.MustParseAddr(c.want)
					}
					h := http.Header{http.CanonicalHeaderKey(hc.header): c.vals}
					conn, _, err := ss.dial(h)
					if err != nil {
						t.Fatalf("%s: %v", c.name, err)
					}
					if got := ss.clientIP(t); got != want {
						t.Errorf("%s: keyed to %v, want %v", c.name, got, want)
					}
					ss.held(t, want)
					refused(t, ss, h, "per-ip")
					conn.Close()
					ss.drained(t)
				}
				ss.alive(t)
			})
		}
	}
}

// TestSpoofMalformedRequests: requests that net/http itself refuses
// (oversized headers, control characters, broken header lines) hold no
// slot, and the server stays up.
func TestSpoofMalformedRequests(t *testing.T) {
	ss := newSpoofServer(t, "tcp4", "version: 1\nclient_ip: {trusted_proxies: [127.0.0.1/32]}\n"+spoofRules)

	// Over http.DefaultMaxHeaderBytes (1 MiB): 431, or a reset while the
	// client is still writing.
	_, resp, err := ss.dial(http.Header{"X-Forwarded-For": {strings.Repeat("1.2.3.4, ", 2<<20/9)}})
	if resp != nil {
		t.Logf("2 MiB X-Forwarded-For: %s", resp.Status)
	} else {
		t.Logf("2 MiB X-Forwarded-For: %v", err)
	}
	if err == nil {
		t.Error("2 MiB header admitted")
	} else if resp != nil && resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("2 MiB header: status %d, want 431", resp.StatusCode)
	}

	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, bad := range []string{
		"X-Forwarded-For: 198.51.100.7\x00\r\n",
		"X-Forwarded-For: 198.51.100.7\x7f, 6.6.6.6\r\n",
		"X-Forwarded-For : 198.51.100.7\r\n",
		"X-Forwarded-For\r\n",
		"X-Forwarded-For: 198.51.100.7\r\n 6.6.6.6\r\n", // obsolete line folding
		"X Forwarded For: 198.51.100.7\r\n",
	} {
		req := "GET /ws HTTP/1.1\r\nHost: " + ss.Listener.Addr().String() + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" + key + bad + "\r\n"
		nc, err := net.Dial("tcp4", ss.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(slack))
		if _, err := nc.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err == nil {
			t.Logf("%q: %s", bad, resp.Status)
		}
		switch {
		case err != nil:
			t.Errorf("%q: no response: %v", bad, err)
		case resp.StatusCode == http.StatusSwitchingProtocols:
			// Accepted by net/http (obsolete line folding joins the lines
			// with a space: "198.51.100.7 6.6.6.6"): not an address, so
			// the walk stops at the proxy.
			if got := ss.clientIP(t); got != ss.peer {
				t.Errorf("%q: upgraded and keyed to %v, want the proxy %v", bad, got, ss.peer)
			}
		case resp.StatusCode != http.StatusBadRequest:
			t.Errorf("%q: status %d, want 400", bad, resp.StatusCode)
		}
		nc.Close()
		ss.drained(t)
	}
	ss.alive(t)
}
