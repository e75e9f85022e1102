package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

type lockedBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// TestRejectLogFlood: 100,000 rejections within ten (fake) seconds produce
// a bounded number of lines, and the suppressed lines are reported.
func TestRejectLogFlood(t *testing.T) {
	var buf lockedBuffer
	clock := newClock()
	l := newRejectLog(slog.New(slog.NewJSONHandler(&buf, nil)), clock.Now, 10, 50, false)
	d := &policy.Decision{Rule: "per-ip", Reason: policy.ReasonRate, ClientIP: netip.MustParseAddr("192.0.2.1")}
	const n = 100_000
	for i := 0; i < n; i++ {
		if i%10_000 == 0 {
			clock.Advance(time.Second)
		}
		l.write(nil, d)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// burst 50 + 10/s over 10 s = at most 150 lines (and at least the burst).
	if len(lines) > 150 || len(lines) < 50 {
		t.Fatalf("%d lines for %d rejections, want between 50 and 150", len(lines), n)
	}
	var reported uint64
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		if rec["rule"] != "per-ip" || rec["reason"] != "rate" {
			t.Fatalf("line lacks rule/reason: %v", rec)
		}
		if s, ok := rec["suppressed"].(float64); ok {
			reported += uint64(s)
		}
	}
	if got, want := reported+l.Suppressed()+uint64(len(lines)), uint64(n); got != want {
		t.Errorf("written %d + suppressed reported %d + pending %d = %d, want %d", len(lines), reported, l.Suppressed(), got, want)
	}
	if reported == 0 {
		t.Error("no line reported a suppressed count")
	}
}

func TestRejectLogHashesKeys(t *testing.T) {
	var buf lockedBuffer
	l := newRejectLog(slog.New(slog.NewJSONHandler(&buf, nil)), newClock().Now, 10, 10, true)
	// A real refusal by a per-user cap, so that the decision carries the key.
	p, err := policy.Parse([]byte("version: 1\nrules:\n  - {name: per-user, key: \"header:X-User\", connections: 1}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lim := policy.NewLimiter(p, policy.Options{})
	r := &http.Request{RemoteAddr: "192.0.2.7:1000", Header: http.Header{"X-User": {"alice@example.com"}}}
	first := lim.Admit(context.Background(), r)
	defer first.Release()
	d := lim.Admit(context.Background(), r)
	if c, _ := d.RefusedClaim(); d.Allowed || c.Key.Str == "" {
		t.Fatalf("second admission: %+v, key %v; want a refusal carrying the key", d, c.Key)
	}
	l.write(&http.Request{}, d)
	out := buf.String()
	if strings.Contains(out, "alice") || strings.Contains(out, "192.0.2.7") {
		t.Errorf("hashed log leaks the key or IP: %s", out)
	}
	if !strings.Contains(out, `"key":"sha256:`) {
		t.Errorf("no hashed key in %s", out)
	}
}

// TestRejectLogMissingIdentity: a refusal for a missing identity has no
// key, and its line must not say key=global (the zero key's name).
func TestRejectLogMissingIdentity(t *testing.T) {
	var buf lockedBuffer
	l := newRejectLog(slog.New(slog.NewTextHandler(&buf, nil)), newClock().Now, 10, 10, false)
	p, err := policy.Parse([]byte("version: 1\nrules:\n  - {name: per-user, key: \"header:X-User\", on_missing: reject, connections: 1}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lim := policy.NewLimiter(p, policy.Options{})
	d := lim.Admit(context.Background(), &http.Request{RemoteAddr: "192.0.2.7:1000", Header: http.Header{}})
	if d.Allowed || d.Reason != policy.ReasonMissing {
		t.Fatalf("decision = %+v, want a missing_identity refusal", d)
	}
	l.write(&http.Request{}, d)
	out := buf.String()
	if strings.Contains(out, "key=") || !strings.Contains(out, "reason=missing_identity") || !strings.Contains(out, "rule=per-user") {
		t.Errorf("line = %q, want rule and reason and no key", out)
	}
}
