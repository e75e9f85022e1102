package policy

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/policy/capacity"
	"github.com/wslimit/wslimit/policy/pressure"
)

const pressureSecret = "pressure test secret of at least 32 bytes"

const pressurePolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_PRESSURE_SECRET
rules:
  - {name: per-ip, key: ip, connections: 4, rate: 10/s, burst: 10}
  - {name: per-user, key: jwt, connections: 100}
  - {name: everyone, key: global, connections: 1000}
pressure:
  interval: 10ms
  connections: {cap: 100, enter: 0.5, leave: 0.25}
  scale: {rules: [per-ip], factor: 0.5}
  refuse_unverified: true
`

// pressureHarness is a limiter over pressurePolicy whose monitor reads a
// connection count the test sets, stepped by hand.
type pressureHarness struct {
	lim   *Limiter
	mon   *pressure.Monitor
	store *countingStore
	conns atomic.Int64
}

func newPressureHarness(t *testing.T, doc string) *pressureHarness {
	t.Helper()
	t.Setenv("WSLIMIT_PRESSURE_SECRET", pressureSecret)
	h := &pressureHarness{store: &countingStore{Store: NewMemoryStore()}}
	h.mon = pressure.New(nil, pressure.Options{Read: func() pressure.Readings {
		return pressure.Readings{Conns: int(h.conns.Load()), FDs: -1, Heap: -1}
	}})
	h.lim = NewLimiter(mustParse(t, doc), Options{Store: h.store, Pressure: h.mon})
	return h
}

// set makes the monitor read n live connections and samples once.
func (h *pressureHarness) set(n int) int {
	h.conns.Store(int64(n))
	return h.mon.Sample()
}

// TestPressureRefusesUnverified: under pressure a handshake without a
// verified token is refused with rule and reason "pressure" before any
// store call, while one with a verified token is admitted; an invalid
// token counts as none. Below the leave threshold everyone is admitted
// again.
func TestPressureRefusesUnverified(t *testing.T) {
	h := newPressureHarness(t, pressurePolicy)
	anon := request("192.0.2.1:1")
	if d := h.lim.Admit(context.Background(), anon); !d.Allowed {
		t.Fatalf("no pressure: anonymous refused by %s/%s", d.Rule, d.Reason)
	} else {
		d.Release()
	}
	if h.set(50) != 1 {
		t.Fatal("50 of 100 live with enter 0.5: level 0")
	}
	before := h.store.admits.Load()
	for _, r := range []*http.Request{anon, request("192.0.2.2:1", "Authorization", "Bearer not.a.token")} {
		d := h.lim.Admit(context.Background(), r)
		if d.Allowed || d.Rule != "pressure" || d.Reason.String() != "pressure" || d.Status() != http.StatusTooManyRequests || d.RetryAfter != time.Second {
			t.Errorf("under pressure: allowed=%v rule=%q reason=%s status=%d retry=%s, want refused by pressure, 429, 1s",
				d.Allowed, d.Rule, d.Reason, d.Status(), d.RetryAfter)
		}
	}
	if got := h.store.admits.Load() - before; got != 0 {
		t.Errorf("%d store calls for pressure refusals, want 0", got)
	}
	d := h.lim.Admit(context.Background(), request("192.0.2.3:1", "Authorization", signed(t, "alice", pressureSecret)))
	if !d.Allowed || d.Identity != "alice" {
		t.Errorf("verified under pressure: allowed=%v by %s/%s identity %q", d.Allowed, d.Rule, d.Reason, d.Identity)
	}
	d.Release()
	if h.set(30) != 1 || h.set(24) != 0 {
		t.Fatal("hysteresis: 30 (above leave 0.25) should stay at 1, 24 should leave")
	}
	if d := h.lim.Admit(context.Background(), anon); !d.Allowed {
		t.Errorf("pressure left: anonymous refused by %s/%s", d.Rule, d.Reason)
	}
}

// TestPressureScalesCaps: under pressure per-ip's cap of 4 is 2 and its
// rate 10/s with burst 10 is 5/s with burst 5; connections above the
// scaled cap are not closed (they keep their slots), new ones are refused
// until the count is below it; other rules keep their limits.
func TestPressureScalesCaps(t *testing.T) {
	h := newPressureHarness(t, pressurePolicy)
	tok := signed(t, "bob", pressureSecret)
	admit := func() *Decision {
		return h.lim.Admit(context.Background(), request("198.51.100.1:1", "Authorization", tok))
	}
	var held []*Decision
	for i := range 3 {
		d := admit()
		if !d.Allowed {
			t.Fatalf("no pressure: admission %d refused", i)
		}
		held = append(held, d)
	}
	h.set(80)
	d := admit()
	c, _ := d.RefusedClaim()
	if d.Allowed || d.Rule != "per-ip" || d.Reason != ReasonConnections || c.Conns != 2 || c.Limit != 5 || c.Burst != 5 {
		t.Fatalf("3 live, scaled cap 2: allowed=%v by %s/%s, claim %+v", d.Allowed, d.Rule, d.Reason, c)
	}
	for i, d := range held {
		if !d.Holds() {
			t.Errorf("live connection %d lost its slot under pressure", i)
		}
	}
	held[0].Release()
	held[1].Release()
	if d := admit(); !d.Allowed {
		t.Errorf("1 live, scaled cap 2: refused by %s/%s", d.Rule, d.Reason)
	}
	if d := admit(); d.Allowed {
		t.Error("2 live, scaled cap 2: admitted")
	}
	h.set(0)
	if d := admit(); !d.Allowed {
		t.Errorf("pressure left, 2 live, cap 4: refused by %s/%s", d.Rule, d.Reason)
	}
	if got := h.store.Store.(*MemoryStore).Stats("everyone").Connections; got != 3 {
		t.Errorf("everyone holds %d, want 3 (its cap is not scaled)", got)
	}
}

// TestPressureWithoutMonitor: a policy with a pressure section and no
// monitor, or a monitor at level 0, decides exactly as without the
// section.
func TestPressureWithoutMonitor(t *testing.T) {
	t.Setenv("WSLIMIT_PRESSURE_SECRET", pressureSecret)
	plain := strings.Split(pressurePolicy, "pressure:")[0]
	for _, doc := range []string{plain, pressurePolicy} {
		lim := NewLimiter(mustParse(t, doc), Options{})
		for i := range 5 {
			d := lim.Admit(context.Background(), request("192.0.2.9:1"))
			if want := i < 4; d.Allowed != want {
				t.Errorf("admission %d: allowed=%v (%s/%s), want %v", i, d.Allowed, d.Rule, d.Reason, want)
			}
		}
	}
}

// TestPressureParseErrors: the pressure and capacity fields report their
// problems with file:line:col.
func TestPressureParseErrors(t *testing.T) {
	head := "version: 1\nrules:\n  - {name: a, key: ip, connections: 3}\n"
	tests := []struct{ name, doc, want string }{
		{"unknown rule", head + "pressure:\n  fds: {}\n  scale: {rules: [b], factor: 0.5}\n", `p.yaml:6:19: pressure.scale.rules[0]: no rule named "b"`},
		{"factor", head + "pressure:\n  fds: {}\n  scale: {rules: [a], factor: 1.5}\n", "pressure.scale.factor: must be in (0, 1] (got 1.5)"},
		{"factor not a number", head + "pressure:\n  fds: {}\n  scale: {rules: [a], factor: half}\n", `expected a number, got string "half"`},
		{"unverified needs jwt", head + "pressure:\n  fds: {}\n  refuse_unverified: true\n", "p.yaml:6:22: pressure.refuse_unverified: needs identity.jwt"},
		{"no action", head + "pressure:\n  heap: {enter: 0.9}\n", "p.yaml:4:1: pressure: no action"},
		{"leave above enter", head + "pressure:\n  heap: {enter: 0.5, leave: 0.7}\n  tighten_penalties: true\n", "pressure.heap.leave: must be at least 0 and below enter 0.5 (got 0.7)"},
		{"auto on ip", "version: 1\nrules:\n  - {name: a, key: ip, connections: auto}\n", "p.yaml:3:37: rules[0].connections: auto is only for caps of the whole process"},
		{"auto bad word", "version: 1\nrules:\n  - {name: a, key: global, connections: lots}\n", `rules[0].connections: expected an integer or auto, got string "lots"`},
		{"reserve too big", "version: 1\ncapacity: {fd_reserve: 1000000000}\nrules:\n  - {name: a, key: global, connections: auto}\n", "rules[0].connections: auto: capacity: RLIMIT_NOFILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "p.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestAutoCaps: connections: auto on a global rule and on listener.global
// is RLIMIT_NOFILE minus the reserve, the same as capacity.Compute gives
// for this process; the limiter logs it.
func TestAutoCaps(t *testing.T) {
	sys := capacity.ReadSystem()
	want, err := capacity.Compute(capacity.Config{FDReserve: 10}, sys)
	if err != nil {
		t.Skip(err)
	}
	p := mustParse(t, `version: 1
capacity: {fd_reserve: 10}
rules:
  - {name: everyone, key: global, connections: auto}
listener: {global: auto}
`)
	lim, _ := p.Listener()
	if got := p.Rules()[0].Conns; got != want.Conns || lim.Global != want.Conns || uint64(got) != sys.NoFile-10 {
		t.Errorf("auto caps: rule %d, listener %d, want %d (nofile %d - 10)", got, lim.Global, want.Conns, sys.NoFile)
	}
	var logs bytes.Buffer
	NewLimiter(p, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	line := logs.String()
	for _, s := range []string{"connection caps from capacity", "connections=" + strconv.Itoa(want.Conns), "bound_by=nofile", "fd_reserve=10", "rules[0].connections", "listener.global"} {
		if !strings.Contains(line, s) {
			t.Errorf("log lacks %q: %s", s, line)
		}
	}
}

// TestPressureKeepTiers: with keep_tiers, only verified users of the kept
// tiers are admitted under pressure.
func TestPressureKeepTiers(t *testing.T) {
	h := newPressureHarness(t, pressurePolicy+"  keep_tiers: {claim: plan, values: [pro]}\n")
	h.set(100)
	sign := func(sub, plan string) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "plan": plan, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(pressureSecret))
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
	for _, tt := range []struct {
		auth string
		want bool
	}{{sign("p", "pro"), true}, {sign("f", "free"), false}, {signed(t, "none", pressureSecret), false}, {"", false}} {
		r := request("192.0.2.7:1")
		if tt.auth != "" {
			r.Header.Set("Authorization", tt.auth)
		}
		d := h.lim.Admit(context.Background(), r)
		if d.Allowed != tt.want || (!tt.want && d.Rule != "pressure") {
			t.Errorf("%q: allowed=%v by %q, want %v", tt.auth, d.Allowed, d.Rule, tt.want)
		}
		d.Release()
	}
	h.set(0)
	if d := h.lim.Admit(context.Background(), request("192.0.2.7:1", "Authorization", sign("f", "free"))); !d.Allowed {
		t.Errorf("no pressure: free tier refused by %s", d.Rule)
	}
}

// TestPressureDryRun: in dry run a pressure refusal is reported and
// refuses nothing.
func TestPressureDryRun(t *testing.T) {
	h := newPressureHarness(t, pressurePolicy+"mode: dry_run\n")
	h.set(100)
	d := h.lim.Admit(context.Background(), request("192.0.2.8:1"))
	if !d.Allowed || !d.WouldReject || d.Rule != "pressure" || !d.Holds() {
		t.Errorf("dry run: allowed=%v would=%v rule=%q holds=%v", d.Allowed, d.WouldReject, d.Rule, d.Holds())
	}
	d.Release()
}

// TestPressureReload: the limiter gives its monitor the pressure section
// of every policy it takes; a policy without one turns the monitor off.
func TestPressureReload(t *testing.T) {
	t.Setenv("WSLIMIT_PRESSURE_SECRET", pressureSecret)
	plain := mustParse(t, strings.Split(pressurePolicy, "pressure:")[0])
	var conns atomic.Int64
	mon := pressure.New(nil, pressure.Options{Read: func() pressure.Readings {
		return pressure.Readings{Conns: int(conns.Load()), FDs: -1, Heap: -1}
	}})
	lim := NewLimiter(plain, Options{Pressure: mon})
	conns.Store(100)
	if mon.Sample() != 0 {
		t.Fatal("no section: level 1")
	}
	lim.SetPolicy(mustParse(t, pressurePolicy))
	if mon.Sample() != 1 {
		t.Fatal("section after reload: level 0 at 100 of 100")
	}
	if d := lim.Admit(context.Background(), request("192.0.2.5:1")); d.Allowed || d.Rule != "pressure" {
		t.Errorf("after reload, under pressure: allowed=%v by %q", d.Allowed, d.Rule)
	}
	lim.SetPolicy(plain)
	if mon.Sample() != 0 {
		t.Error("section removed: level 1")
	}
}

// TestPressureTightensPenalties: with tighten_penalties, a penalty whose
// threshold is 4 bans after 2 offences while under pressure, and after 4
// again once the level falls.
func TestPressureTightensPenalties(t *testing.T) {
	doc := `version: 1
rules:
  - {name: per-ip, key: ip, connections: 1}
penalties:
  - {name: capped, key: ip, offences: {refused: [per-ip]}, threshold: 4, window: 1h, ban: 1h}
pressure:
  connections: {cap: 100, enter: 0.5, leave: 0.25}
  tighten_penalties: true
`
	h := newPressureHarness(t, doc)
	ctx := context.Background()
	offend := func(addr string, n int) *Decision {
		hold := h.lim.Admit(ctx, request(addr+":1"))
		if !hold.Allowed {
			t.Fatalf("%s: first connection refused by %s/%s", addr, hold.Rule, hold.Reason)
		}
		defer hold.Release()
		for range n {
			if d := h.lim.Admit(ctx, request(addr+":2")); d.Allowed {
				t.Fatalf("%s: a second connection admitted past the cap of 1", addr)
			}
		}
		return h.lim.Admit(ctx, request(addr+":3"))
	}
	if h.set(60) != 1 {
		t.Fatal("60 of 100 with enter 0.5: level 0")
	}
	if d := offend("192.0.2.1", 2); d.Reason != ReasonBanned {
		t.Errorf("under pressure, after 2 offences of threshold 4: reason %s, want banned", d.Reason)
	}
	if h.set(10) != 0 {
		t.Fatal("10 of 100 with leave 0.25: level 1")
	}
	if d := offend("192.0.2.2", 2); d.Reason == ReasonBanned {
		t.Error("level 0, after 2 offences of threshold 4: banned, want the threshold restored")
	}
	if d := offend("192.0.2.3", 4); d.Reason != ReasonBanned {
		t.Errorf("level 0, after 4 offences of threshold 4: reason %s, want banned", d.Reason)
	}
}
