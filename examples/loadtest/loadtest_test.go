package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

// Every test server is an httptest server: it listens on 127.0.0.1 only.

// guarded starts a loopback server whose /ws endpoint is guarded by the
// policy in yaml, and returns its ws:// URL.
func guarded(t *testing.T, yaml string, up websocket.Upgrader) string {
	t.Helper()
	p, err := policy.Parse([]byte(yaml), t.Name()+".yaml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := ws.New(p, ws.Options{Upgrader: up})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
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
	t.Cleanup(func() {
		srv.Close()
		g.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}

// slack bounds the waits of these tests that are not their subject: CI
// runs every package's tests at once, with -race, on 2 cores, and a stall
// of seconds must make a test slower, never fail it. It is every run's
// handshake timeout (an expired one is an error, and every test wants
// none).
const slack = 20 * time.Second

// mustRun runs cfg, with a handshake timeout of slack unless cfg sets one,
// and checks the summary's own consistency.
func mustRun(t *testing.T, cfg Config) Summary {
	t.Helper()
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = slack
	}
	// Bounds the run (an interrupted run fails the test); no run of these
	// tests lasts more than seconds unless it is broken.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.Interrupted {
		t.Fatalf("run interrupted: %+v", s)
	}
	if s.Admitted+s.Rejected+s.Errors != s.Attempts {
		t.Errorf("admitted %d + rejected %d + errors %d != attempts %d", s.Admitted, s.Rejected, s.Errors, s.Attempts)
	}
	if s.Errors != 0 {
		t.Errorf("errors: %v", s.ErrorKinds)
	}
	if s.Latency.Count != s.Admitted+s.Rejected {
		t.Errorf("latency count %d, want %d", s.Latency.Count, s.Admitted+s.Rejected)
	}
	l := s.Latency
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Errorf("latency percentiles out of order: %+v", l)
	}
	return s
}

func wantCounts(t *testing.T, s Summary, admitted int, code string, rejected int, ruleReason string) {
	t.Helper()
	if s.Admitted != admitted || s.Rejected != rejected {
		t.Errorf("admitted %d rejected %d, want %d and %d; summary %+v", s.Admitted, s.Rejected, admitted, rejected, s)
	}
	if rejected > 0 && (s.ByCode[code] != rejected || s.ByRule[ruleReason] != rejected) {
		t.Errorf("by code %v by rule %v, want %s and %q: %d", s.ByCode, s.ByRule, code, ruleReason, rejected)
	}
	if s.ByCode["101"] != admitted {
		t.Errorf("by code %v, want 101: %d", s.ByCode, admitted)
	}
}

const capPolicy = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 5
`

func TestConnFloodCap(t *testing.T) {
	url := guarded(t, capPolicy, websocket.Upgrader{})
	s := mustRun(t, Config{URL: url, Mode: ModeConnFlood, N: 20, Concurrency: 4, Hold: 200 * time.Millisecond})
	wantCounts(t, s, 5, "429", 15, "per-ip: connections")
	if s.PeakLive != 5 {
		t.Errorf("peak live %d, want 5", s.PeakLive)
	}
	if s.RetryAfter["1"] != 15 {
		t.Errorf("retry after %v, want 1s: 15", s.RetryAfter)
	}
	if s.ServerClosed != 0 {
		t.Errorf("server closed %d", s.ServerClosed)
	}
}

func TestConnFloodCapCloseMode(t *testing.T) {
	t.Parallel() // every admitted connection waits out the settle
	url := guarded(t, capPolicy+"reject: {mode: close, max_closing_per_ip: 64}\n", websocket.Upgrader{})
	// A settle of seconds: the 1013 follows the upgrade at once, but a
	// refusal whose close frame came after the settle would count as an
	// admission, so only a stall of seconds between the server's 101 and
	// its close frame may change the counts. The admitted connections
	// wait it out at once, not one after the other.
	s := mustRun(t, Config{URL: url, Mode: ModeConnFlood, N: 20, Concurrency: 4, Hold: 200 * time.Millisecond, Settle: 5 * time.Second})
	wantCounts(t, s, 5, "close 1013", 15, "per-ip: connections")
	if s.PeakLive != 5 || s.RetryAfter["1"] != 15 {
		t.Errorf("peak live %d (want 5), retry after %v", s.PeakLive, s.RetryAfter)
	}
}

func TestRateFlood(t *testing.T) {
	// 1/m: no token comes back during the test (unless its 50 handshakes
	// take a minute), so exactly the burst is admitted. -duration is not
	// the subject here: a minute, so that it never cuts the 50 short.
	url := guarded(t, `version: 1
rules:
  - name: per-ip
    key: ip
    rate: 1/m
    burst: 5
`, websocket.Upgrader{})
	s := mustRun(t, Config{URL: url, Mode: ModeRateFlood, N: 50, Concurrency: 2, Duration: time.Minute})
	if s.Attempts != 50 {
		t.Fatalf("attempts %d, want 50", s.Attempts)
	}
	wantCounts(t, s, 5, "429", 45, "per-ip: rate")
	for k := range s.RetryAfter {
		if k == "0" || len(k) > 2 { // 1..60 seconds
			t.Errorf("retry after %v", s.RetryAfter)
		}
	}
	if s.PeakLive < 1 || s.PeakLive > 2 {
		t.Errorf("peak live %d, want 1 or 2 (concurrency 2, closed at once)", s.PeakLive)
	}
	if s.AttemptsPerSec <= 0 {
		t.Errorf("attempts/s %v", s.AttemptsPerSec)
	}
}

const openPolicy = `version: 1
rules:
  - name: everyone
    key: global
    connections: 1000
`

func TestRateAndDurationBound(t *testing.T) {
	t.Parallel() // it waits out a -duration of 2 s
	url := guarded(t, openPolicy, websocket.Upgrader{})

	// Paced: 6 attempts at 20/s take at least 5 intervals of 50ms (a lower
	// bound: slowness only adds to it).
	s := mustRun(t, Config{URL: url, Mode: ModeRateFlood, N: 6, Rate: 20})
	if s.Attempts != 6 || s.Admitted != 6 || s.AttackSeconds < 0.25 {
		t.Errorf("paced: %d attempts, %d admitted in %.3fs", s.Attempts, s.Admitted, s.AttackSeconds)
	}

	// Bounded by -duration long before -n: 1000 attempts at 2/s would take
	// 500 s; -duration 2s lets at most the 5 scheduled at 0, 0.5 ... 2 s
	// start (one more for rounding), however late they are handed out.
	// At least one starts unless the run stalls for the whole 2 s before
	// its first. The attack phase ends once the started handshakes end:
	// 30 s is seconds of slack for those, and far below 500 s.
	s = mustRun(t, Config{URL: url, Mode: ModeRateFlood, N: 1000, Rate: 2, Duration: 2 * time.Second})
	if s.Attempts < 1 || s.Attempts > 6 || s.AttackSeconds > 30 {
		t.Errorf("bounded: %d attempts in %.3fs", s.Attempts, s.AttackSeconds)
	}
}

func TestRotateXFFStoppedBySubnet(t *testing.T) {
	// Behind a trusted proxy (the test client, 127.0.0.1): every handshake
	// comes from a new address of one /64, so the per-ip bucket never
	// runs dry, and the per-subnet bucket stops the rotation.
	url := guarded(t, `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32]
rules:
  - name: per-ip
    key: ip
    rate: 1/m
    burst: 1
  - name: per-subnet
    key: subnet
    ipv4_prefix: 24
    ipv6_prefix: 64
    rate: 1/m
    burst: 10
`, websocket.Upgrader{})
	s := mustRun(t, Config{URL: url, Mode: ModeRotateXFF, N: 40, Concurrency: 4, XFFPrefix: "2001:db8:1:2::/64"})
	wantCounts(t, s, 10, "429", 30, "per-subnet: rate")
	if s.XFFAddresses != 40 {
		t.Errorf("xff addresses %d, want 40", s.XFFAddresses)
	}
	// The same through an IPv4 /24, and with random addresses of another
	// /64: each its own subnet key with its own burst.
	s = mustRun(t, Config{URL: url, Mode: ModeRotateXFF, N: 20, Concurrency: 4, XFFPrefix: "198.51.100.0/24"})
	wantCounts(t, s, 10, "429", 10, "per-subnet: rate")
	s = mustRun(t, Config{URL: url, Mode: ModeRotateXFF, N: 20, Concurrency: 4, XFFPrefix: "2001:db8:9:9::/64", XFFRandom: true})
	wantCounts(t, s, 10, "429", 10, "per-subnet: rate")
}

func TestRotateXFFUntrustedPeer(t *testing.T) {
	// No trusted proxy: the forged header is ignored and the per-ip rule
	// sees one client.
	url := guarded(t, `version: 1
rules:
  - name: per-ip
    key: ip
    rate: 1/m
    burst: 3
`, websocket.Upgrader{})
	s := mustRun(t, Config{URL: url, Mode: ModeRotateXFF, N: 20, Concurrency: 4, XFFPrefix: "2001:db8::/64"})
	wantCounts(t, s, 3, "429", 17, "per-ip: rate")
}

func TestConnFloodXFFSubnetCap(t *testing.T) {
	url := guarded(t, `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32]
rules:
  - name: per-ip
    key: ip
    connections: 1
  - name: per-subnet
    key: subnet
    ipv6_prefix: 64
    connections: 8
`, websocket.Upgrader{})
	s := mustRun(t, Config{URL: url, Mode: ModeConnFlood, N: 20, Concurrency: 4, Hold: 200 * time.Millisecond, XFFPrefix: "2001:db8::/64"})
	wantCounts(t, s, 8, "429", 12, "per-subnet: connections")
	if s.PeakLive != 8 {
		t.Errorf("peak live %d, want 8", s.PeakLive)
	}
}

const testSecret = "0123456789abcdef0123456789abcdef-loadtest-only"

const identityPolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization, subprotocol, cookie:token]
    algorithms: [HS256]
    secret_env: WSLIMIT_LOADTEST_JWT_SECRET
    audience: chat
rules:
  - name: per-user
    key: jwt
    on_missing: reject
    connections: 3
  - name: per-ip
    key: ip
    connections: 100
`

func TestTokenReuse(t *testing.T) {
	t.Setenv("WSLIMIT_LOADTEST_JWT_SECRET", testSecret)
	// A server per run: a server releases a slot a moment after the
	// client has seen the close, so back-to-back runs would overlap.
	up := websocket.Upgrader{Subprotocols: []string{"chat"}}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "alice", "aud": "chat", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"header", "subprotocol", "cookie:token"} {
		t.Run(in, func(t *testing.T) {
			url := guarded(t, identityPolicy, up)
			s := mustRun(t, Config{URL: url, Mode: ModeTokenReuse, N: 10, Concurrency: 5, Hold: 200 * time.Millisecond, Token: tok, TokenIn: in})
			wantCounts(t, s, 3, "429", 7, "per-user: connections")
			var out bytes.Buffer
			if err := s.WriteText(&out); err != nil {
				t.Fatal(err)
			}
			if err := s.WriteJSON(&out); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.String(), tok) {
				t.Error("the token is printed")
			}
		})
	}
	// Without a token the rule's on_missing: reject answers 401.
	s := mustRun(t, Config{URL: guarded(t, identityPolicy, up), Mode: ModeConnFlood, N: 4, Concurrency: 2, Hold: -1})
	wantCounts(t, s, 0, "401", 4, "per-user: missing_identity")
}

func TestServerClosesWhileHeld(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(100 * time.Millisecond)
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "bye"), time.Now().Add(time.Second))
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	// The hold ends when the server has closed every connection, about
	// 100ms after the upgrades: an upper bound of 30 s is seconds of slack
	// for that and far below the 1-minute hold the run would otherwise
	// wait out.
	s := mustRun(t, Config{URL: url, Mode: ModeConnFlood, N: 3, Settle: 20 * time.Millisecond, Hold: time.Minute})
	if s.Admitted != 3 || s.ServerClosed != 3 {
		t.Errorf("admitted %d, server closed %d; want 3 and 3", s.Admitted, s.ServerClosed)
	}
	if s.ElapsedSeconds > 30 {
		t.Errorf("held for %.1fs although the server closed every connection", s.ElapsedSeconds)
	}
}

// TestInterruptedHold: an interruption during the hold ends the run at
// once, with every admission recorded. The interruption comes when the
// progress line shows the five admitted (not after a fixed delay, which a
// slow machine could spend before the handshakes are done), and the run
// must end within 30 s of it: seconds of slack, far below the 2-minute
// hold.
func TestInterruptedHold(t *testing.T) {
	url := guarded(t, openPolicy, websocket.Upgrader{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cw := &cancelWhen{want: "admitted 5 ", cancel: cancel}
	fallback := time.AfterFunc(time.Minute, cancel) // five admissions never shown: fail, not hang
	defer fallback.Stop()
	s, err := run(ctx, Config{URL: url, Mode: ModeConnFlood, N: 5, Hold: 2 * time.Minute, HandshakeTimeout: slack,
		Progress: cw, ProgressInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if cw.at.IsZero() {
		t.Fatalf("the progress line never showed 5 admitted; summary %+v", s)
	}
	if took := time.Since(cw.at); !s.Interrupted || s.Admitted != 5 || took > 30*time.Second {
		t.Errorf("interrupted %v, admitted %d; the run ended %s after the interruption", s.Interrupted, s.Admitted, took)
	}
}

// cancelWhen is a progress writer that calls cancel (once) when a line
// contains want, and records when. The run's progress goroutine writes; it
// has exited when run returns.
type cancelWhen struct {
	want   string
	cancel func()
	at     time.Time
}

func (w *cancelWhen) Write(p []byte) (int, error) {
	if w.at.IsZero() && strings.Contains(string(p), w.want) {
		w.at = time.Now()
		w.cancel()
	}
	return len(p), nil
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, u := range []string{
		"ws://192.0.2.1/ws", "wss://192.0.2.1:8443/ws", "ws://[2001:db8::1]:8080/ws",
		"ws://0.0.0.0:8080/ws", "ws://[::ffff:192.0.2.1]/ws",
	} {
		_, err := run(context.Background(), Config{URL: u, Mode: ModeConnFlood, N: 1})
		if !errors.Is(err, errNotLoopback) {
			t.Errorf("%s: got %v, want errNotLoopback", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1/ws", "127.0.0.1:8080", "ws:///ws"} {
		if _, err := run(context.Background(), Config{URL: u, Mode: ModeConnFlood, N: 1}); err == nil {
			t.Errorf("%s: no error", u)
		}
	}
}

func TestLoopbackGuard(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "127.1.2.3:80": true, "[::1]:80": true, "[::ffff:127.0.0.1]:80": true,
		"192.0.2.1:80": false, "[2001:db8::1]:80": false, "0.0.0.0:80": false, "[::]:80": false, "garbage": false,
	} {
		if err := loopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

func TestCLI(t *testing.T) {
	var out, errb bytes.Buffer
	if code := cli([]string{"-url", "ws://192.0.2.1/ws", "-mode", "conn-flood"}, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), "WARNING") || !strings.Contains(errb.String(), "-i-own-this-server") {
		t.Errorf("non-loopback: code %d, stderr %q", code, errb.String())
	}

	url := guarded(t, capPolicy, websocket.Upgrader{})
	out.Reset()
	errb.Reset()
	code := cli([]string{"-url", url, "-mode", "conn-flood", "-n", "7", "-c", "2", "-hold", "0", "-handshake-timeout", slack.String(), "-json", "-H", "X-Test: 1"}, &out, &errb)
	if code != 0 {
		t.Fatalf("code %d, stderr %s", code, errb.String())
	}
	var s Summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if s.Admitted != 5 || s.ByRule["per-ip: connections"] != 2 {
		t.Errorf("summary %+v", s)
	}
	if !strings.Contains(errb.String(), "attempts 7") {
		t.Errorf("no progress line on stderr: %q", errb.String())
	}

	for _, args := range [][]string{
		{"-mode", "nope"},
		{"-mode", "conn-flood", "-n", "1000000"},
		{"-mode", "conn-flood", "-c", "100000"},
		{"-mode", "conn-flood", "-duration", "1h"},
		{"-mode", "conn-flood", "-hold", "1h"},
		{"-mode", "rate-flood", "-rate", "-1"},
		{"-mode", "rotate-xff"},
		{"-mode", "rotate-xff", "-xff-prefix", "nope"},
		{"-mode", "token-reuse"},
		{"-mode", "token-reuse", "-token", "a b"},
		{"-mode", "token-reuse", "-token", "x", "-token-in", "query"},
		{"-mode", "conn-flood", "-H", "Sec-WebSocket-Key: x"},
		{"-mode", "conn-flood", "-reject-close-codes", "99"},
		{"-mode", "conn-flood", "extra"},
		{"-mode", "conn-flood", "-n", "0"},
		{"-mode", "conn-flood", "-duration", "0s"},
	} {
		errb.Reset()
		if code := cli(append([]string{"-url", url, "-quiet"}, args...), &out, &errb); code == 0 {
			t.Errorf("%q: accepted", args)
		}
	}
}

func TestAddrGen(t *testing.T) {
	g, err := newAddrGen("2001:db8:1:2::/64", false)
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("2001:db8:1:2::/64")
	seen := map[netip.Addr]bool{}
	for i := range 1000 {
		a := g.addr(i)
		if !p.Contains(a) || seen[a] {
			t.Fatalf("%d: %s outside %s or repeated", i, a, p)
		}
		seen[a] = true
	}
	if g.addr(0) != netip.MustParseAddr("2001:db8:1:2::1") {
		t.Errorf("first address %s", g.addr(0))
	}

	g, _ = newAddrGen("198.51.100.7/24", false) // host bits are dropped
	if a := g.addr(0); a != netip.MustParseAddr("198.51.100.1") {
		t.Errorf("first IPv4 address %s", a)
	}
	if a := g.addr(255); a != netip.MustParseAddr("198.51.100.0") { // wraps
		t.Errorf("256th IPv4 address %s", a)
	}
	if g.distinct(1000) != 256 {
		t.Errorf("distinct %d", g.distinct(1000))
	}

	for _, s := range []string{"2001:db8::/48", "10.0.0.0/8", "2001:db8::/3", "0.0.0.0/0", "2001:db8::1/128"} {
		g, err := newAddrGen(s, true)
		if err != nil {
			t.Fatal(err)
		}
		p := netip.MustParsePrefix(s).Masked()
		for i := range 100 {
			if a := g.addr(i); !p.Contains(a) {
				t.Fatalf("%s: %s outside", s, a)
			}
		}
	}
	for _, s := range []string{"nope", "::ffff:10.0.0.0/104", "fe80::%eth0/64", "10.0.0.1"} {
		if _, err := newAddrGen(s, false); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestParseCloseReason(t *testing.T) {
	for in, want := range map[string][3]any{
		"per-ip: connections; retry in 1s": {"per-ip", "connections", 1},
		"per-user: missing_identity":       {"per-user", "missing_identity", -1},
		"per-subnet: rate; retry in 42s":   {"per-subnet", "rate", 42},
		"go away":                          {"", "go away", -1},
		"":                                 {"", "", -1},
	} {
		rule, reason, retry := parseCloseReason(in)
		if got := [3]any{rule, reason, retry}; got != want {
			t.Errorf("%q: got %v, want %v", in, got, want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the progress goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestProgress(t *testing.T) {
	for _, inPlace := range []bool{false, true} {
		url := guarded(t, capPolicy, websocket.Upgrader{}) // one per run, see TestTokenReuse
		var buf syncBuffer
		s := mustRun(t, Config{URL: url, Mode: ModeConnFlood, N: 8, Hold: 300 * time.Millisecond,
			Progress: &buf, ProgressInPlace: inPlace, ProgressInterval: 50 * time.Millisecond})
		out := buf.String()
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if inPlace {
			lines = strings.Split(strings.TrimSpace(out), "\r")
		}
		if len(lines) < 3 || strings.Contains(out, "\r") != inPlace {
			t.Errorf("in place %v: %q", inPlace, out)
		}
		last := strings.TrimSpace(lines[len(lines)-1])
		for _, want := range []string{"attempts 8", "admitted 5", "rejected 3 [429:3]", "errors 0", "live 0"} {
			if !strings.Contains(last, want) {
				t.Errorf("last line %q lacks %q", last, want)
			}
		}
		if s.Admitted != 5 {
			t.Errorf("admitted %d", s.Admitted)
		}
	}
}
