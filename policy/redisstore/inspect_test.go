package redisstore

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// TestInspectorReadsRedis: a store's Inspector reports the leases of every
// instance, read from Redis: keys holding slots, their counts, buckets, and
// the top keys parsed back into keys.Key.
func TestInspectorReadsRedis(t *testing.T) {
	stores := instances(t, sharedAddr(t), 2, Options{OnError: FailDeny})
	a, b := stores[0], stores[1]
	ctx := context.Background()
	admit := func(s *Store, claims ...policy.Claim) {
		t.Helper()
		if _, v, err := s.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
			t.Fatalf("Admit = %+v, %v", v, err)
		}
	}
	ip := keys.IP(mustAddr(t, "203.0.113.7"))
	for range 3 {
		admit(a, policy.Claim{Rule: "per-ip", Key: ip, Conns: 10, Limit: 5, Burst: 10})
	}
	admit(b, policy.Claim{Rule: "per-ip", Key: ip, Conns: 10, Limit: 5, Burst: 10})
	admit(b, policy.Claim{Rule: "per-ip", Key: keys.String("bob"), Conns: 10})
	st := a.Stats("per-ip")
	if st.Keys != 2 || st.Connections != 5 || st.Buckets != 1 {
		t.Fatalf("Stats = %+v, want 2 keys, 5 connections (both instances), 1 bucket", st)
	}
	top := a.TopKeys("per-ip", 1)
	if len(top) != 1 || top[0].Key != ip || top[0].Count != 4 {
		t.Fatalf("TopKeys = %+v, want %v with 4", top, ip)
	}
	if r := a.Rules(); len(r) != 1 || r[0] != "per-ip" {
		t.Fatalf("Rules = %v", r)
	}
	if k := parseKey(a.prefix+"r:{10.0.0.0/24}:l", len(a.prefix)+3); k.Kind != keys.KindSubnet || k.Prefix.String() != "10.0.0.0/24" {
		t.Fatalf("subnet key parsed as %+v", k)
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestEventLogRateLimited: a state change logged again within the interval
// is suppressed and counted on the next line.
func TestEventLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var e eventLog
	for range 5 {
		e.event(log, evOpened, slog.LevelWarn, "opened")
	}
	if n := strings.Count(buf.String(), "opened"); n != 1 {
		t.Fatalf("%d lines for 5 events within %v, want 1:\n%s", n, eventEvery, buf.String())
	}
	e.mu.Lock()
	e.last[evOpened] = time.Now().Add(-eventEvery)
	e.mu.Unlock()
	e.event(log, evOpened, slog.LevelWarn, "opened")
	if !strings.Contains(buf.String(), "suppressed=4") {
		t.Fatalf("no suppressed count:\n%s", buf.String())
	}
}
