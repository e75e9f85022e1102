package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/penalty"
	"github.com/wslimit/wslimit/ws"
)

// fakeClock is the server's clock in these tests: frozen unless moved, so
// that ban lengths are exact and every connection lives 0s by it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// penalized starts a loopback echo server guarded by yaml on clock c and
// returns its URL and penalty engine.
func penalized(t *testing.T, yaml string, c *fakeClock) (string, *penalty.Engine) {
	t.Helper()
	p, err := policy.Parse([]byte(yaml), t.Name()+".yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := penalty.New(penalty.Options{Now: c.Now})
	g, err := ws.New(p, ws.Options{Now: c.Now, Penalties: e})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(func() { srv.Close(); g.Close() })
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws", e
}

// waitStats polls e's first penalty's stats until cond holds (offences
// are counted when the server sees a connection close: after the client
// has gone).
func waitStats(t *testing.T, e *penalty.Engine, what string, cond func(penalty.Stats) bool) penalty.Stats {
	t.Helper()
	deadline := time.Now().Add(slack)
	for {
		st := e.Stats()[0]
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; stats %+v", slack, what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantBanned(t *testing.T, s Summary, rule string, n int, retry string) {
	t.Helper()
	if s.Rejected != n || s.ByRule[rule+": banned"] != n || s.RetryAfter[retry] != n {
		t.Fatalf("got rejected %d by rule %v retry %v, want %d banned by %s with retry %ss", s.Rejected, s.ByRule, s.RetryAfter, n, rule, retry)
	}
}

const loopPolicy = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 100}
penalties:
  - name: loop
    key: ip
    offences: {short_lived: 10s}
    threshold: 5
    ban: 30s
    factor: 2
reject: {mode: close}
`

// TestReconnectLoopBanned: a client in a reconnect loop is banned after 5
// short-lived connections, refused with 1008 for exactly the 30s ban, and
// gets 60s on its repeat.
func TestReconnectLoopBanned(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_000_000, 0)}
	url, e := penalized(t, loopPolicy, c)
	loop := func(n int) Summary {
		return mustRun(t, Config{URL: url, Mode: ModeReconnectLoop, N: n, Concurrency: 1, Settle: time.Second})
	}
	if s := loop(5); s.Admitted != 5 {
		t.Fatalf("first 5: admitted %d, want 5", s.Admitted)
	}
	waitStats(t, e, "no ban after 5 short-lived connections", func(st penalty.Stats) bool { return st.Bans == 1 })
	s := loop(3)
	wantBanned(t, s, "loop", 3, "30")
	if s.ByCode["close 1008"] != 3 {
		t.Fatalf("close codes %v, want 3 × 1008", s.ByCode)
	}
	c.Add(30*time.Second - time.Millisecond)
	wantBanned(t, loop(1), "loop", 1, "1")
	c.Add(time.Millisecond)
	if s := loop(5); s.Admitted != 5 {
		t.Fatalf("after 30s: admitted %d of 5, rejected %v", s.Admitted, s.ByRule)
	}
	waitStats(t, e, "no second ban", func(st penalty.Stats) bool { return st.Bans == 2 })
	wantBanned(t, loop(1), "loop", 1, "60")
	if st := e.Stats()[0]; st.Offences[penalty.KindShortLived] != 10 {
		t.Fatalf("short-lived offences %d, want 10 (refused handshakes are none)", st.Offences[penalty.KindShortLived])
	}
}

const sprayPolicy = `version: 1
client_ip: {trusted_proxies: [127.0.0.1/32]}
identity:
  jwt: {from: ["header:Authorization"], algorithms: [HS256], secret_env: WSLIMIT_TEST_SPRAY_SECRET}
rules:
  - {name: per-ip, key: ip, connections: 100}
  - {name: per-user, key: jwt.sub, connections: 10}
penalties:
  - name: spray
    key: ip
    offences: {invalid_identity: true}
    threshold: 5
    ban: 1m
`

// TestTokenSprayerBannedByAddress: a client spraying forged tokens is
// banned by its address after 5, its later tokens are not even verified,
// and a client with a valid token in the same /24 is untouched.
func TestTokenSprayerBannedByAddress(t *testing.T) {
	const secret = "spray test secret: at least 32 bytes long"
	t.Setenv("WSLIMIT_TEST_SPRAY_SECRET", secret)
	c := &fakeClock{t: time.Unix(1_000_000, 0)}
	url, e := penalized(t, sprayPolicy, c)
	spray := func(n int) Summary {
		return mustRun(t, Config{URL: url, Mode: ModeTokenSpray, N: n, Concurrency: 2, XFFPrefix: "198.51.100.7/32"})
	}
	if s := spray(5); s.Admitted != 5 {
		t.Fatalf("forged tokens count as none: admitted %d of 5, want 5", s.Admitted)
	}
	wantBanned(t, spray(20), "spray", 20, "60")
	if st := e.Stats()[0]; st.Offences[penalty.KindInvalidIdentity] != 5 || st.Active != 1 {
		t.Fatalf("stats %+v: want 5 invalid-identity offences (banned tokens are never verified) and 1 ban", st)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Unix(1_000_000, 0).Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	s := mustRun(t, Config{URL: url, Mode: ModeTokenReuse, N: 3, Token: tok, XFFPrefix: "198.51.100.8/32", Hold: -1})
	if s.Admitted != 3 || s.Rejected != 0 {
		t.Fatalf("neighbour in the same /24: admitted %d rejected %v, want 3 and none", s.Admitted, s.ByRule)
	}
}

const churnPolicy = `version: 1
client_ip: {trusted_proxies: [127.0.0.1/32]}
rules:
  - {name: per-ip, key: ip, connections: 100}
penalties:
  - name: churn
    key: ip
    offences: {short_lived: 10s}
    threshold: 1
    ban: 1m
    max_bans: 8
`

// TestAddressChurnCannotEvictBans: a flood of new offenders from many
// addresses fills the ban table; the ban issued before it is neither
// evicted nor shortened, and the excess bans are dropped, not swapped in.
func TestAddressChurnCannotEvictBans(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_000_000, 0)}
	url, e := penalized(t, churnPolicy, c)
	victim := Config{URL: url, Mode: ModeReconnectLoop, N: 1, Concurrency: 1, XFFPrefix: "203.0.113.1/32"}
	mustRun(t, victim)
	waitStats(t, e, "victim not banned", func(st penalty.Stats) bool { return st.Bans == 1 })
	c.Add(10 * time.Second)
	s := mustRun(t, Config{URL: url, Mode: ModeAddrChurn, N: 200, Concurrency: 4, XFFPrefix: "10.0.0.0/8"})
	if s.Admitted+s.Rejected != 200 {
		t.Fatalf("churn: admitted %d rejected %d errors %d", s.Admitted, s.Rejected, s.Errors)
	}
	st := waitStats(t, e, "churn offences not all counted", func(st penalty.Stats) bool {
		return st.Offences[penalty.KindShortLived] == uint64(1+s.Admitted)
	})
	if st.Active != 8 || st.Dropped < 150 {
		t.Fatalf("stats %+v: want the table full (8 active) and the excess dropped", st)
	}
	wantBanned(t, mustRun(t, victim), "churn", 1, "50")
}
