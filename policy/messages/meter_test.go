package messages

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// clock is an injected clock for the table.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mustCompile(t *testing.T, c Config, dry bool) *Limits {
	t.Helper()
	l, err := Compile(c, []string{"per-ip", "per-user"}, dry)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// recorder collects violations.
type recorder struct {
	mu sync.Mutex
	vs []Violation
}

func (r *recorder) add(v Violation) { r.mu.Lock(); r.vs = append(r.vs, v); r.mu.Unlock() }
func (r *recorder) all() []Violation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Violation(nil), r.vs...)
}

func newTable(t *testing.T, c Config, dry bool) (*Table, *clock, *recorder) {
	t.Helper()
	clk := &clock{t: time.Unix(1000, 0)}
	rec := &recorder{}
	return NewTable(mustCompile(t, c, dry), TableOptions{Now: clk.now, OnViolation: rec.add}), clk, rec
}

var ip = netip.MustParseAddr("192.0.2.1")

func keyOf(k string) func(string) (keys.Key, bool) {
	return func(rule string) (keys.Key, bool) {
		if rule == "per-user" {
			return keys.Key{Kind: keys.KindString, Str: k}, true
		}
		return keys.Key{}, false
	}
}

func TestThrottleWaitsExactly(t *testing.T) {
	tb, clk, rec := newTable(t, Config{Limits: []LimitConfig{{Name: "conn", Rate: "10/s", Burst: 5}}}, false)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	for i := range 5 {
		if res := m.Message(10); res != (Result{}) {
			t.Fatalf("message %d within the burst: got %+v, want zero", i, res)
		}
	}
	// The 6th takes the token it lacks on credit: 1 token at 10/s is
	// 100ms (waits round up by 1ns, so that the debt is paid after them).
	const ns = time.Nanosecond
	if res := m.Message(10); res.Wait != 100*time.Millisecond+ns || res.Code != 0 {
		t.Fatalf("6th message: got %+v, want Wait 100ms", res)
	}
	// The 7th owes two tokens' worth.
	if res := m.Message(10); res.Wait != 200*time.Millisecond+ns {
		t.Fatalf("7th message: got %+v, want Wait 200ms", res)
	}
	clk.add(200 * time.Millisecond)
	if res := m.Message(10); res.Wait != 100*time.Millisecond+ns {
		t.Fatalf("after paying the debt: got %+v, want Wait 100ms", res)
	}
	vs := rec.all()
	if len(vs) != 3 || vs[0].Action != ActionThrottle || vs[0].Reason != ReasonMessages || vs[0].Limit != "conn" {
		t.Fatalf("violations: got %+v, want 3 throttles of conn", vs)
	}
	st := tb.Stats()
	if len(st) != 1 || st[0].Messages != 3 || st[0].Bytes != 30 || st[0].Action != ActionThrottle {
		t.Fatalf("stats: got %+v", st)
	}
}

func TestCloseTakesNothing(t *testing.T) {
	tb, clk, _ := newTable(t, Config{Action: "close", Limits: []LimitConfig{{Name: "conn", Bytes: "1KiB/s", BytesBurst: 2048}}}, false)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	if res := m.Message(2000); res != (Result{}) {
		t.Fatalf("2000 of 2048 bytes: got %+v", res)
	}
	res := m.Message(100)
	if res.Code != ClosePolicyViolation || !strings.Contains(res.Reason, "conn: bytes over 1KiB/s") {
		t.Fatalf("over the byte burst: got %+v, want 1008 with a reason", res)
	}
	// A refused charge took nothing: 48 bytes are still there.
	if res := m.Message(48); res != (Result{}) {
		t.Fatalf("48 remaining bytes: got %+v", res)
	}
	clk.add(time.Second)
	if res := m.Message(1024); res != (Result{}) {
		t.Fatalf("a second later, 1024 bytes: got %+v", res)
	}
}

func TestDryRunReportsOnly(t *testing.T) {
	tb, _, rec := newTable(t, Config{MaxSize: 100, Action: "close", Limits: []LimitConfig{{Name: "conn", Rate: "1/s"}}}, true)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	for i := range 5 {
		if res := m.Message(10); res != (Result{}) {
			t.Fatalf("dry run message %d: got %+v, want zero", i, res)
		}
	}
	if res := m.Message(1000); res != (Result{}) {
		t.Fatalf("dry run oversize: got %+v, want zero", res)
	}
	vs := rec.all()
	if len(vs) != 5 {
		t.Fatalf("got %d violations, want 5 (4 over the rate, 1 over the size): %+v", len(vs), vs)
	}
	for _, v := range vs {
		if v.Action != ActionDryRun {
			t.Fatalf("violation %+v: want action dry_run", v)
		}
	}
}

func TestPerKeySharedAndDropped(t *testing.T) {
	tb, _, rec := newTable(t, Config{Limits: []LimitConfig{{Name: "user", Per: "rule:per-user", Rate: "1/m", Burst: 4}}}, false)
	a1, a2, b := tb.Open(ip, keyOf("alice")), tb.Open(ip, keyOf("alice")), tb.Open(ip, keyOf("bob"))
	if got := tb.Keys(); got != 2 {
		t.Fatalf("Keys: got %d, want 2", got)
	}
	for range 2 {
		a1.Message(1)
		a2.Message(1)
	}
	if res := a2.Message(1); res.Wait == 0 {
		t.Fatalf("alice's 5th message over two connections: got %+v, want a wait", res)
	}
	if res := b.Message(1); res != (Result{}) {
		t.Fatalf("bob is not alice: got %+v", res)
	}
	if v := rec.all()[0]; v.Key.Str != "alice" || v.Rule != "per-user" {
		t.Fatalf("violation: got %+v, want alice's key and rule", v)
	}
	a1.Close()
	a1.Close() // idempotent
	if got := tb.Keys(); got != 2 {
		t.Fatalf("Keys after one of alice's two closed: got %d, want 2", got)
	}
	a2.Close()
	b.Close()
	if got := tb.Keys(); got != 0 {
		t.Fatalf("Keys after every connection closed: got %d, want 0", got)
	}
}

func TestNoKeyNoLimit(t *testing.T) {
	tb, _, _ := newTable(t, Config{Limits: []LimitConfig{{Name: "ip", Per: "rule:per-ip", Rate: "1/m"}}}, false)
	m := tb.Open(ip, keyOf("a")) // keyOf gives no per-ip key
	defer m.Close()
	for range 3 {
		if res := m.Message(1); res != (Result{}) {
			t.Fatalf("a per-key limit whose rule gave no key: got %+v", res)
		}
	}
}

func TestKeysBounded(t *testing.T) {
	tb, _, _ := newTable(t, Config{MaxKeys: 2, Limits: []LimitConfig{{Name: "user", Per: "rule:per-user", Rate: "1/m"}}}, false)
	var ms []*Meter
	for _, k := range []string{"a", "b", "c", "d"} {
		ms = append(ms, tb.Open(ip, keyOf(k)))
		if got := tb.Keys(); got > 2 {
			t.Fatalf("Keys: got %d, want at most max_keys 2", got)
		}
	}
	for _, m := range ms {
		m.Close()
	}
	if got := tb.Keys(); got != 0 {
		t.Fatalf("Keys after all closed: got %d, want 0", got)
	}
}

func TestReloadAppliesToLiveMeters(t *testing.T) {
	tb, clk, _ := newTable(t, Config{Limits: []LimitConfig{{Name: "conn", Rate: "1/s", Burst: 10}}}, false)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	for range 8 {
		m.Message(1)
	}
	// 2 tokens left; the new limit keeps them, at most its burst 1.
	tb.SetLimits(mustCompile(t, Config{Action: "close", Limits: []LimitConfig{{Name: "conn", Rate: "1/s", Burst: 1}}}, false))
	if res := m.Message(1); res != (Result{}) {
		t.Fatalf("first message after the reload: got %+v, want the token kept", res)
	}
	if res := m.Message(1); res.Code != ClosePolicyViolation {
		t.Fatalf("second: got %+v, want the new close action", res)
	}
	clk.add(time.Second)
	if res := m.Message(1); res != (Result{}) {
		t.Fatalf("a second later: got %+v, want the token earned at 1/s", res)
	}
	tb.SetLimits(nil)
	for range 5 {
		if res := m.Message(1); res != (Result{}) {
			t.Fatalf("limits removed: got %+v", res)
		}
	}
}

func TestOversize(t *testing.T) {
	tb, _, rec := newTable(t, Config{MaxSize: 1 << 20}, false)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	if res := m.Message(1 << 20); res != (Result{}) {
		t.Fatalf("exactly max_size: got %+v", res)
	}
	res := m.Oversize(1<<20 + 1)
	if res.Code != CloseMessageTooBig || res.Reason != "max_size: message over 1048576 bytes" {
		t.Fatalf("over max_size: got %+v", res)
	}
	if vs := rec.all(); len(vs) != 1 || vs[0].Reason != ReasonSize || vs[0].Limit != "max_size" {
		t.Fatalf("violations: got %+v", vs)
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		name string
		c    Config
		want string
	}{
		{"empty", Config{}, "messages: limits nothing"},
		{"bad action", Config{Action: "drop", MaxSize: 1}, "messages.action: must be throttle or close"},
		{"bad rate", Config{Limits: []LimitConfig{{Name: "a", Rate: "fast"}}}, "messages.limits[0].rate: rate \"fast\""},
		{"bad unit", Config{Limits: []LimitConfig{{Name: "a", Bytes: "1KB/s"}}}, "messages.limits[0].bytes"},
		{"unknown rule", Config{Limits: []LimitConfig{{Name: "a", Rate: "1/s", Per: "rule:nope"}}}, "messages.limits[0].per: no rule named \"nope\""},
		{"bad per", Config{Limits: []LimitConfig{{Name: "a", Rate: "1/s", Per: "user"}}}, "messages.limits[0].per: must be connection or rule:NAME"},
		{"nothing", Config{Limits: []LimitConfig{{Name: "a"}}}, "messages.limits[0]: limit \"a\" limits nothing"},
		{"burst without rate", Config{Limits: []LimitConfig{{Name: "a", Rate: "1/s", BytesBurst: 3}}}, "messages.limits[0].bytes_burst: a burst needs a rate"},
		{"duplicate", Config{Limits: []LimitConfig{{Name: "a", Rate: "1/s"}, {Name: "a", Rate: "1/s"}}}, "messages.limits[1].name: duplicate"},
		{"negative size", Config{MaxSize: -1}, "messages.max_size: must not be negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.c, []string{"per-ip"}, false)
			var me *Error
			if err == nil || !errors.As(err, &me) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an *Error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	for s, want := range map[string]float64{"50/s": 50, "600/m": 10, "5/10s": 0.5, "256KiB/s": 256 << 10, "1MiB/s": 1 << 20, "2 MiB/2s": 1 << 20} {
		got, err := parseRate(s, true)
		if err != nil || got != want {
			t.Errorf("parseRate(%q): got %v, %v; want %v", s, got, err, want)
		}
	}
	if _, err := parseRate("1KiB/s", false); err == nil {
		t.Errorf("a message rate with a byte unit: got no error")
	}
}

// TestReloadAddsARate: a limit that gains a byte rate on reload starts
// that bucket full, although the fast path counted into it before.
func TestReloadAddsARate(t *testing.T) {
	tb, _, _ := newTable(t, Config{Limits: []LimitConfig{{Name: "conn", Rate: "1000/s", Burst: 1000}}}, false)
	m := tb.Open(ip, keyOf("a"))
	defer m.Close()
	m.Stamp() // one time for every charge below: the fast path
	for range 100 {
		m.Charge(1, 100)
	}
	tb.SetLimits(mustCompile(t, Config{Action: "close", Limits: []LimitConfig{{Name: "conn", Rate: "1000/s", Burst: 1000, Bytes: "1KiB/s", BytesBurst: 1024}}}, false))
	if res := m.Charge(1, 1024); res != (Result{}) {
		t.Fatalf("the new byte bucket's first 1024 bytes: got %+v, want a full bucket", res)
	}
	if res := m.Charge(1, 1); res.Code != ClosePolicyViolation {
		t.Fatalf("one byte more: got %+v, want 1008", res)
	}
}
