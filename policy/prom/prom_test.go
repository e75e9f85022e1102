package prom_test

import (
	"context"
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/prom"
	"github.com/wslimit/wslimit/ws"
)

const secretEnv = "WSLIMIT_PROM_TEST_SECRET"

var testSecret = []byte("prom-test-secret-0123456789abcdefghij")

func mustPolicy(t testing.TB, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(doc), t.Name()+".yaml")
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return p
}

// server is a guarded echo server on loopback whose metrics land in a
// fresh registry.
type server struct {
	*httptest.Server
	reg   *prometheus.Registry
	obs   *prom.Observer
	store *policy.MemoryStore
}

func newServer(t *testing.T, doc string) *server {
	t.Helper()
	fixed := time.Now() // buckets never refill during a test
	s := &server{store: policy.NewMemoryStore(), reg: prometheus.NewRegistry()}
	s.obs = prom.New(prom.Options{Store: s.store})
	s.reg.MustRegister(s.obs)
	g, err := ws.New(mustPolicy(t, doc), ws.Options{
		Store:    s.store,
		Observer: s.obs,
		Now:      func() time.Time { return fixed },
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(func() {
		s.Server.Close()
		_ = g.Close()
	})
	return s
}

// dial opens a WebSocket as the client ip (through the trusted loopback
// proxy) with extra headers given as name, value pairs. It returns the
// connection, or nil and the refusal's HTTP status.
func (s *server) dial(t *testing.T, ip string, hdr ...string) (*websocket.Conn, int) {
	t.Helper()
	h := http.Header{"X-Forwarded-For": {ip}}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	d := websocket.Dialer{HandshakeTimeout: slack}
	c, resp, err := d.Dial("ws"+strings.TrimPrefix(s.URL, "http"), h)
	if err == nil {
		return c, http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial as %s: %v", ip, err)
	}
	return nil, resp.StatusCode
}

func (s *server) mustOpen(t *testing.T, ip string, hdr ...string) *websocket.Conn {
	t.Helper()
	c, status := s.dial(t, ip, hdr...)
	if c == nil {
		t.Fatalf("dial as %s: status %d, want an upgrade", ip, status)
	}
	return c
}

func (s *server) mustRefuse(t *testing.T, want int, ip string, hdr ...string) {
	t.Helper()
	c, status := s.dial(t, ip, hdr...)
	if c != nil {
		c.Close()
		t.Fatalf("dial as %s: upgraded, want status %d", ip, want)
	}
	if status != want {
		t.Fatalf("dial as %s: status %d, want %d", ip, status, want)
	}
}

// live returns wslimit_live_connections{rule}, -1 when the series is absent.
func live(t *testing.T, reg prometheus.Gatherer, rule string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "wslimit_live_connections" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "rule" && lp.GetValue() == rule {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// slack bounds the waits of these tests (a handshake, waitLive), none of
// which is their subject: CI runs every package's tests at once, with
// -race, on 2 cores, and a stall of seconds must make a test slower, never
// fail it. A wait returns as soon as its condition holds.
const slack = 20 * time.Second

// waitLive polls until the live gauge of rule is want (the server notices
// a closed connection asynchronously), and checks that it mirrors the
// store's count.
func (s *server) waitLive(t *testing.T, rule string, want float64) {
	t.Helper()
	deadline := time.Now().Add(slack)
	for {
		got := live(t, s.reg, rule)
		if got == want && float64(s.store.Stats(rule).Connections) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("live_connections{rule=%q} = %v (store %d), want %v",
				rule, got, s.store.Stats(rule).Connections, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func compare(t *testing.T, reg prometheus.Gatherer, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

// histogramCount returns the sample count of wslimit_decision_seconds.
func histogramCount(t *testing.T, reg prometheus.Gatherer) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "wslimit_decision_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no wslimit_decision_seconds")
	return 0
}

func token(t *testing.T, sub string, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": exp.Unix()}).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const enforceDoc = `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32]
  header: X-Forwarded-For
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: ` + secretEnv + `
exempt: [203.0.113.0/24]
rules:
  - name: per-ip
    key: ip
    connections: 2
  - name: per-tenant
    key: header:X-Tenant
    on_missing: skip
    rate: 1/h
    burst: 2
    max_keys: 2
  - name: per-user
    key: jwt
    on_missing: skip
    connections: 5
`

// script is the scripted sequence against an enforcing policy. It returns
// the server with every connection closed and released, and the keys and
// credentials the clients used (none may appear in a label).
func script(t *testing.T) (*server, []string) {
	t.Setenv(secretEnv, string(testSecret))
	s := newServer(t, enforceDoc)
	const sub = "user-alice-7731"
	valid := token(t, sub, time.Now().Add(time.Hour))
	var open []*websocket.Conn

	// Cap 2 per IP: open 2, the third is refused, close one, open one.
	a1 := s.mustOpen(t, "198.51.100.1")
	open = append(open, s.mustOpen(t, "198.51.100.1"))
	s.mustRefuse(t, http.StatusTooManyRequests, "198.51.100.1")
	s.waitLive(t, "per-ip", 2)
	a1.Close()
	s.waitLive(t, "per-ip", 1)
	open = append(open, s.mustOpen(t, "198.51.100.1"))
	s.waitLive(t, "per-ip", 2)

	// A rate rule with a burst of 2 per tenant: the third handshake of
	// tenant acme is refused, from an address that holds no slot after.
	open = append(open, s.mustOpen(t, "198.51.100.2", "X-Tenant", "tenant-acme"))
	open = append(open, s.mustOpen(t, "198.51.100.3", "X-Tenant", "tenant-acme"))
	s.mustRefuse(t, http.StatusTooManyRequests, "198.51.100.4", "X-Tenant", "tenant-acme")
	// Two more tenants in a table of 2 buckets: one bucket is evicted.
	open = append(open, s.mustOpen(t, "198.51.100.5", "X-Tenant", "tenant-globex"))
	open = append(open, s.mustOpen(t, "198.51.100.6", "X-Tenant", "tenant-initech"))

	// An exempt client is never counted, whatever it sends.
	open = append(open, s.mustOpen(t, "203.0.113.9", "X-Tenant", "tenant-acme"))
	// A forged token counts as no token; a valid one adds the per-user rule.
	open = append(open, s.mustOpen(t, "198.51.100.7", "Authorization", "Bearer forged.token.value"))
	open = append(open, s.mustOpen(t, "198.51.100.8", "Authorization", "Bearer "+valid))

	s.waitLive(t, "per-ip", 8)
	s.waitLive(t, "per-user", 1)
	compare(t, s.reg, `
# HELP wslimit_tracked_keys Keys holding at least one connection slot in the store, by rule.
# TYPE wslimit_tracked_keys gauge
wslimit_tracked_keys{rule="per-ip"} 7
wslimit_tracked_keys{rule="per-tenant"} 0
wslimit_tracked_keys{rule="per-user"} 1
`, "wslimit_tracked_keys")

	for _, c := range open {
		c.Close()
	}
	s.waitLive(t, "per-ip", 0)
	s.waitLive(t, "per-user", 0)
	return s, []string{
		"198.51.100.", "203.0.113.", "127.0.0.1",
		"tenant-acme", "tenant-globex", "tenant-initech",
		sub, valid, "forged.token.value",
	}
}

// TestScriptedSequence scrapes a fresh registry after a scripted sequence
// over loopback with real clients and finds the exact counts (issue 5,
// must show 1).
func TestScriptedSequence(t *testing.T) {
	s, _ := script(t)
	compare(t, s.reg, `
# HELP wslimit_decisions_total Handshake decisions by result: admitted, rejected, exempt, dry_run_would_reject.
# TYPE wslimit_decisions_total counter
wslimit_decisions_total{result="admitted"} 9
wslimit_decisions_total{result="dry_run_would_reject"} 0
wslimit_decisions_total{result="exempt"} 1
wslimit_decisions_total{result="rejected"} 2
# HELP wslimit_rejections_total Handshakes refused, by refusing rule and reason (rule is empty for store errors).
# TYPE wslimit_rejections_total counter
wslimit_rejections_total{reason="connections",rule="per-ip"} 1
wslimit_rejections_total{reason="rate",rule="per-tenant"} 1
# HELP wslimit_admissions_total Admitted handshakes by each rule that applied to them.
# TYPE wslimit_admissions_total counter
wslimit_admissions_total{rule="per-ip"} 9
wslimit_admissions_total{rule="per-tenant"} 4
wslimit_admissions_total{rule="per-user"} 1
# HELP wslimit_live_connections Connection slots held by admitted connections of this process, by capped rule.
# TYPE wslimit_live_connections gauge
wslimit_live_connections{rule="per-ip"} 0
wslimit_live_connections{rule="per-user"} 0
# HELP wslimit_invalid_tokens_total Handshakes carrying a token that failed verification (treated as no token).
# TYPE wslimit_invalid_tokens_total counter
wslimit_invalid_tokens_total 1
# HELP wslimit_tracked_keys Keys holding at least one connection slot in the store, by rule.
# TYPE wslimit_tracked_keys gauge
wslimit_tracked_keys{rule="per-ip"} 0
wslimit_tracked_keys{rule="per-tenant"} 0
wslimit_tracked_keys{rule="per-user"} 0
# HELP wslimit_buckets Token buckets tracked by the store, by rule.
# TYPE wslimit_buckets gauge
wslimit_buckets{rule="per-ip"} 0
wslimit_buckets{rule="per-tenant"} 2
wslimit_buckets{rule="per-user"} 0
# HELP wslimit_bucket_evictions_total Token buckets dropped before they had refilled, by rule (rising: max_keys too small).
# TYPE wslimit_bucket_evictions_total counter
wslimit_bucket_evictions_total{rule="per-ip"} 0
wslimit_bucket_evictions_total{rule="per-tenant"} 1
wslimit_bucket_evictions_total{rule="per-user"} 0
`,
		"wslimit_decisions_total", "wslimit_rejections_total", "wslimit_dry_run_would_reject_total",
		"wslimit_admissions_total", "wslimit_live_connections", "wslimit_invalid_tokens_total",
		"wslimit_tracked_keys", "wslimit_buckets", "wslimit_bucket_evictions_total",
		"wslimit_store_errors_total")
	if got := histogramCount(t, s.reg); got != 12 {
		t.Errorf("wslimit_decision_seconds count = %d, want 12 (one per decision)", got)
	}
	// No store error counter was configured: the series must not exist.
	if n, err := testutil.GatherAndCount(s.reg, "wslimit_store_errors_total"); err != nil || n != 0 {
		t.Errorf("store_errors_total series = %d, %v; want none without Options.StoreErrors", n, err)
	}
}

const dryRunDoc = `version: 1
client_ip:
  trusted_proxies: [127.0.0.1/32]
  header: X-Forwarded-For
rules:
  - name: per-ip
    key: ip
    connections: 1
  - name: per-user
    key: header:X-User
    on_missing: reject
    connections: 5
mode: dry_run
`

// TestDryRun: a dry-run policy admits everything and counts what it would
// have refused; a would-reject decision that holds the slots of the rules
// that admitted it counts them as live until it closes.
func TestDryRun(t *testing.T) {
	s := newServer(t, dryRunDoc)
	d1 := s.mustOpen(t, "198.51.100.1", "X-User", "u1")
	d2 := s.mustOpen(t, "198.51.100.1", "X-User", "u1") // over the cap: no slot taken
	d3 := s.mustOpen(t, "198.51.100.2")                 // no user: per-ip slot only
	s.waitLive(t, "per-ip", 2)
	s.waitLive(t, "per-user", 1)
	for _, c := range []*websocket.Conn{d1, d2, d3} {
		c.Close()
	}
	s.waitLive(t, "per-ip", 0)
	s.waitLive(t, "per-user", 0)
	compare(t, s.reg, `
# HELP wslimit_decisions_total Handshake decisions by result: admitted, rejected, exempt, dry_run_would_reject.
# TYPE wslimit_decisions_total counter
wslimit_decisions_total{result="admitted"} 1
wslimit_decisions_total{result="dry_run_would_reject"} 2
wslimit_decisions_total{result="exempt"} 0
wslimit_decisions_total{result="rejected"} 0
# HELP wslimit_dry_run_would_reject_total Handshakes a dry-run policy admitted but enforcement would have refused, by rule and reason.
# TYPE wslimit_dry_run_would_reject_total counter
wslimit_dry_run_would_reject_total{reason="connections",rule="per-ip"} 1
wslimit_dry_run_would_reject_total{reason="missing_identity",rule="per-user"} 1
# HELP wslimit_admissions_total Admitted handshakes by each rule that applied to them.
# TYPE wslimit_admissions_total counter
wslimit_admissions_total{rule="per-ip"} 2
wslimit_admissions_total{rule="per-user"} 1
# HELP wslimit_live_connections Connection slots held by admitted connections of this process, by capped rule.
# TYPE wslimit_live_connections gauge
wslimit_live_connections{rule="per-ip"} 0
wslimit_live_connections{rule="per-user"} 0
`,
		"wslimit_decisions_total", "wslimit_rejections_total", "wslimit_dry_run_would_reject_total",
		"wslimit_admissions_total", "wslimit_live_connections")
	if got := histogramCount(t, s.reg); got != 3 {
		t.Errorf("wslimit_decision_seconds count = %d, want 3", got)
	}
}

// TestNoKeyInLabels: after the scripted sequence, no label of any series
// is an address or contains a key or credential a client sent, and the
// only label names are rule, reason and result.
func TestNoKeyInLabels(t *testing.T) {
	s, secrets := script(t)
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"rule": true, "reason": true, "result": true}
	series := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series++
			for _, lp := range m.GetLabel() {
				name, v := lp.GetName(), lp.GetValue()
				if !allowed[name] {
					t.Errorf("%s: label %q: only rule, reason and result may label", mf.GetName(), name)
				}
				if _, err := netip.ParseAddr(v); err == nil {
					t.Errorf("%s{%s=%q}: an address as a label value", mf.GetName(), name, v)
				}
				if _, err := netip.ParsePrefix(v); err == nil {
					t.Errorf("%s{%s=%q}: a subnet as a label value", mf.GetName(), name, v)
				}
				for _, k := range secrets {
					if strings.Contains(v, k) {
						t.Errorf("%s{%s=%q}: contains the client key %q", mf.GetName(), name, v, k)
					}
				}
			}
		}
	}
	if series < 20 {
		t.Fatalf("scraped %d series: the check saw too little", series)
	}
}

// failingStore fails every admission, as a Redis store with on_error deny
// would refuse.
type failingStore struct{ policy.Store }

func (failingStore) Admit(context.Context, time.Time, []policy.Claim) (policy.Lease, policy.Verdict, error) {
	return policy.Lease{}, policy.Verdict{}, errors.New("down")
}

// TestStoreErrorsAndMissingIdentity: refusals that name no rule (store
// errors) and 401 refusals are counted; the store error counter is read at
// scrape time.
func TestStoreErrorsAndMissingIdentity(t *testing.T) {
	var errs uint64 = 3
	obs := prom.New(prom.Options{StoreErrors: func() uint64 { return errs }})
	reg := prometheus.NewRegistry()
	reg.MustRegister(obs)

	req := func(user string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.RemoteAddr = "198.51.100.1:1234"
		if user != "" {
			r.Header.Set("X-User", user)
		}
		return r
	}
	doc := strings.Replace(dryRunDoc, "mode: dry_run", "mode: enforce", 1)
	down := policy.NewLimiter(mustPolicy(t, doc), policy.Options{Store: failingStore{}, Observer: obs})
	if d := down.Admit(context.Background(), req("u1")); d.Allowed || d.Reason != policy.ReasonStoreError {
		t.Fatalf("failing store: allowed=%v reason=%v, want a store_error refusal", d.Allowed, d.Reason)
	}
	up := policy.NewLimiter(mustPolicy(t, doc), policy.Options{Observer: obs})
	if d := up.Admit(context.Background(), req("")); d.Allowed || d.Reason != policy.ReasonMissing {
		t.Fatalf("no user: allowed=%v reason=%v, want missing_identity", d.Allowed, d.Reason)
	}
	d := up.Admit(context.Background(), req("u1"))
	if !d.Allowed {
		t.Fatal("u1 refused")
	}
	if got := live(t, reg, "per-ip"); got != 1 {
		t.Errorf("live per-ip = %v, want 1", got)
	}
	d.Release()
	d.Release() // exactly once: the second call reports nothing
	if got := live(t, reg, "per-ip"); got != 0 {
		t.Errorf("live per-ip after double release = %v, want 0", got)
	}
	errs = 5
	compare(t, reg, `
# HELP wslimit_rejections_total Handshakes refused, by refusing rule and reason (rule is empty for store errors).
# TYPE wslimit_rejections_total counter
wslimit_rejections_total{reason="missing_identity",rule="per-user"} 1
wslimit_rejections_total{reason="store_error",rule=""} 1
# HELP wslimit_store_errors_total Failed store calls (errors and timeouts).
# TYPE wslimit_store_errors_total counter
wslimit_store_errors_total 5
`, "wslimit_rejections_total", "wslimit_store_errors_total")
}

// TestConcurrentDecisions: the live gauge balances to zero and the
// counters add up when many goroutines decide and release at once
// (run with -race).
func TestConcurrentDecisions(t *testing.T) {
	obs := prom.New(prom.Options{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(obs)
	lim := policy.NewLimiter(mustPolicy(t, `version: 1
rules:
  - name: everyone
    key: global
    connections: 1000000
`), policy.Options{Observer: obs})
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			for range each {
				d := lim.Admit(context.Background(), r)
				d.Release()
			}
		})
	}
	// Scrape while deciding.
	for range 10 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if got := live(t, reg, "everyone"); got != 0 {
		t.Errorf("live = %v, want 0", got)
	}
	compare(t, reg, `
# HELP wslimit_admissions_total Admitted handshakes by each rule that applied to them.
# TYPE wslimit_admissions_total counter
wslimit_admissions_total{rule="everyone"} 4000
`, "wslimit_admissions_total")
}

func TestDescribeMatchesCollect(t *testing.T) {
	obs := prom.New(prom.Options{Store: policy.NewMemoryStore(), StoreErrors: func() uint64 { return 0 }})
	// pedantic registration checks every collected metric against the
	// described ones.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(obs)
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	lim := policy.NewLimiter(mustPolicy(t, "version: 1\nrules:\n  - {name: g, key: global, connections: 1, rate: 1/h}\n"), policy.Options{Observer: obs})
	lim.Admit(context.Background(), r)
	lim.Admit(context.Background(), r)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(obs); n == 0 {
		t.Fatal("nothing collected")
	}
}
