package redisstore

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

// Failure tests start their own redis-server: they freeze, kill and
// restart it, which must never happen to the shared one.

// The failure tests' timeout is short enough to tell a bounded call from
// one that hangs on a frozen Redis (go-redis's own read timeout is 3 s), and
// long enough that a healthy call on a loaded test machine does not reach
// it: a call on a healthy Redis must never be decided by on_error here.
const (
	failTimeout  = 500 * time.Millisecond
	failCooldown = time.Second
	// slack is what a call may take beyond failTimeout on a loaded machine
	// (race detector, other test binaries) and still count as bounded.
	slack = time.Second
)

// failOpts are the options of the failure tests: a 500ms budget, a breaker
// opening after 3 failures for 1s.
func failOpts(t *testing.T, mode FailMode, fb policy.Store) Options {
	return Options{
		Prefix: uniquePrefix(t), OnError: mode, Fallback: fb,
		Timeout: failTimeout, BreakerFailures: 3, BreakerCooldown: failCooldown,
		LeaseTTL: 3 * time.Second, RefreshInterval: 100 * time.Millisecond,
	}
}

// waitRecovered polls until s decides through Redis again (the breaker has
// closed), within a bounded time.
func waitRecovered(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		before := s.Snapshot().Degraded
		_, _, err := s.Admit(context.Background(), time.Now(), []policy.Claim{conns("probe", "p", 1<<30)})
		if err != nil {
			t.Fatal(err)
		}
		if s.Snapshot().Degraded == before && !s.Snapshot().BreakerOpen {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %+v", s.Snapshot())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOnErrorModes stops Redis mid-test (SIGSTOP: connections hang, the
// worst case for timeouts) and checks each on_error mode, the latency
// budget once the breaker is open, recovery when Redis resumes, and limits
// after Redis is killed and restarted empty on the same port.
func TestOnErrorModes(t *testing.T) {
	t.Parallel()
	srv := ownServer(t, "")
	fallback := newMemStore()
	type mode struct {
		name  string
		store *Store
		calls *countHook // round trips this mode's client sent
	}
	var modes []mode
	for _, m := range []FailMode{FailAllow, FailDeny, FailLocal} {
		c, h := newClient(t, srv.addr)
		var fb policy.Store
		if m == FailLocal {
			fb = fallback
		}
		modes = append(modes, mode{m.String(), newStore(t, c, failOpts(t, m, fb)), h})
	}
	claims := []policy.Claim{conns("per-user", "erin", 2)}
	ctx := context.Background()

	// Healthy: every mode decides through Redis.
	for _, m := range modes {
		for i, want := range []bool{true, true, false} {
			_, v, err := m.store.Admit(ctx, time.Now(), claims)
			if err != nil || v.OK != want {
				t.Fatalf("%s healthy admission %d = %+v, %v; want OK=%v", m.name, i, v, err, want)
			}
		}
	}

	srv.freeze()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			const calls = 50
			var lat []time.Duration
			var verdicts []policy.Verdict
			sent := m.calls.n.Load()
			start := time.Now()
			for range calls {
				t0 := time.Now()
				_, v, err := m.store.Admit(ctx, time.Now(), claims)
				lat = append(lat, time.Since(t0))
				if err != nil {
					t.Fatalf("Admit returned an error: %v (on_error is applied inside the store)", err)
				}
				verdicts = append(verdicts, v)
				time.Sleep(5 * time.Millisecond)
			}
			elapsed := time.Since(start)
			// Calls that reached Redis, counted on the client rather than
			// guessed from latency (a loaded machine makes any call slow).
			reached := int(m.calls.n.Load() - sent)
			sorted := slices.Clone(lat)
			slices.Sort(sorted)
			maxLat, p50 := sorted[len(sorted)-1], sorted[len(sorted)/2]
			t.Logf("%d calls in %v with Redis frozen: max %v, median %v, %d round trips sent to Redis",
				calls, elapsed.Round(time.Millisecond), maxLat.Round(time.Microsecond), p50.Round(time.Microsecond), reached)
			// Bound: no call waits past its timeout budget (+ slack for a
			// loaded machine); unbounded, it would wait 3 s for go-redis.
			if maxLat > failTimeout+slack {
				t.Errorf("max latency %v exceeds the timeout budget %v (+%v slack)", maxLat, failTimeout, slack)
			}
			// Bound: a timeout opens the breaker once a PING with a longer
			// budget (confirm) fails too, so it opens within failTimeout +
			// confirm of the freeze. Until then: one admission's own call
			// (later ones wait for the sync that the first failure asks
			// for), syncs one at a time (each at most failTimeout), the
			// PING; then one probe per cooldown.
			open := failTimeout + m.store.confirm
			maxReached := 1 + int(open/failTimeout) + 1 + 1 + int(elapsed/failCooldown) + 1
			if reached > maxReached {
				t.Errorf("%d round trips reached Redis, want at most %d: the breaker did not hold them off", reached, maxReached)
			}
			if !m.store.Snapshot().BreakerOpen {
				t.Error("breaker not open while Redis is frozen")
			}
			switch m.name {
			case "allow":
				for i, v := range verdicts {
					if !v.OK {
						t.Fatalf("call %d: %+v, want admitted", i, v)
					}
				}
			case "deny":
				for i, v := range verdicts {
					if v.OK || v.Reason != policy.ReasonStoreError {
						t.Fatalf("call %d: %+v, want refused with store_error", i, v)
					}
				}
			case "local":
				// This instance holds both slots of cap 2 (admitted
				// through Redis) and released none: local has no slot to
				// take over and refuses them all.
				for i, v := range verdicts {
					if v.OK || v.Reason != policy.ReasonConnections {
						t.Fatalf("call %d: %+v, want refused by the local share", i, v)
					}
				}
			}
		})
	}

	srv.thaw()
	for _, m := range modes {
		waitRecovered(t, m.store)
	}
	// Redis kept its data: the two healthy leases per mode still hold.
	for _, m := range modes {
		if _, v, _ := m.store.Admit(ctx, time.Now(), claims); v.OK || v.Reason != policy.ReasonConnections {
			t.Fatalf("%s after thaw: %+v, want refused by the cap in Redis", m.name, v)
		}
	}

	// Kill Redis (connections refused), restart it empty on the same port.
	srv.kill()
	for _, m := range modes {
		for range 5 {
			t0 := time.Now()
			if _, _, err := m.store.Admit(ctx, time.Now(), claims); err != nil {
				t.Fatalf("%s with Redis dead: %v", m.name, err)
			}
			if d := time.Since(t0); d > failTimeout+slack {
				t.Fatalf("%s with Redis dead: Admit took %v", m.name, d)
			}
		}
	}
	srv.restart(t)
	fresh := []policy.Claim{conns("per-user", "frank", 2)}
	for _, m := range modes {
		waitRecovered(t, m.store)
		degraded := m.store.Snapshot().Degraded
		for i, want := range []bool{true, true, false} {
			_, v, err := m.store.Admit(ctx, time.Now(), fresh)
			if err != nil || v.OK != want {
				t.Fatalf("%s after restart, admission %d = %+v, %v; want OK=%v", m.name, i, v, err, want)
			}
		}
		if m.store.Snapshot().Degraded != degraded {
			t.Fatalf("%s after restart: decisions still degraded", m.name)
		}
	}
}

// TestOutageLeasesCountAfterRecovery: connections admitted by on_error
// while Redis was unreachable take their slots in Redis once it answers
// again (if the cap has room), and releases made during the outage are
// sent after it.
func TestOutageLeasesCountAfterRecovery(t *testing.T) {
	srv := ownServer(t, "")
	ca, _ := newClient(t, srv.addr)
	cb, _ := newClient(t, srv.addr)
	o := failOpts(t, FailAllow, nil)
	a := newStore(t, ca, o)
	b := newStore(t, cb, o)
	claims := []policy.Claim{conns("per-user", "gina", 3)}
	ctx := context.Background()
	ck, _ := a.keys(&claims[0])

	l0, v, _ := a.Admit(ctx, time.Now(), claims) // through Redis
	if !v.OK {
		t.Fatal("refused")
	}
	srv.freeze()
	var outage []policy.Lease
	for range 2 {
		l, v, err := a.Admit(ctx, time.Now(), claims)
		if err != nil || !v.OK {
			t.Fatalf("allow mode during outage: %+v, %v", v, err)
		}
		outage = append(outage, l)
	}
	a.Release(ctx, l0, claims) // cannot reach Redis: kept for later
	// Pending also holds the members of admissions that timed out (the
	// script might have run): they are taken back too.
	if st := a.Snapshot(); st.Pending < 1 || st.Live != 2 {
		t.Fatalf("during outage: %+v, want a pending release and 2 live leases", st)
	}
	srv.thaw()
	waitRecovered(t, a)

	deadline := time.Now().Add(3 * time.Second)
	for {
		members, err := ca.ZRange(ctx, ck, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{a.member(outage[0].ID), a.member(outage[1].ID)}
		slices.Sort(members)
		slices.Sort(want)
		if slices.Equal(members, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease set = %v, want the two outage leases %v", members, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatal("the third slot should be free")
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("cap exceeded: outage leases were not counted after recovery")
	}
}

// TestFromConfig builds a store from a policy's redis section with the
// password taken from the environment.
func TestFromConfig(t *testing.T) {
	srv := ownServer(t, "s3cret")
	t.Setenv("WSLIMIT_TEST_REDIS_PASSWORD", "s3cret")
	t.Setenv("WSLIMIT_TEST_REDIS_WRONG", "nope")
	cfg := policy.RedisConfig{
		Addrs:       []string{srv.addr},
		PasswordEnv: "WSLIMIT_TEST_REDIS_PASSWORD",
		Prefix:      uniquePrefix(t),
		OnError:     "deny",
		LeaseTTL:    time.Second,
		Timeout:     time.Second,
	}
	s, err := FromConfig(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatalf("FromConfig: %v", err)
	}
	claims := []policy.Claim{conns("r", "k", 1)}
	for i, want := range []bool{true, false} {
		_, v, err := s.Admit(context.Background(), time.Now(), claims)
		if err != nil || v.OK != want || s.Snapshot().Degraded != 0 {
			t.Fatalf("admission %d = %+v, %v (stats %+v); want OK=%v through Redis", i, v, err, s.Snapshot(), want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	bad := []struct {
		name string
		edit func(*policy.RedisConfig)
		want string
	}{
		{"unset variable", func(c *policy.RedisConfig) { c.PasswordEnv = "WSLIMIT_TEST_UNSET_VARIABLE" }, "not set"},
		{"wrong password", func(c *policy.RedisConfig) { c.PasswordEnv = "WSLIMIT_TEST_REDIS_WRONG" }, "WRONGPASS"},
		{"no address", func(c *policy.RedisConfig) { c.Addrs = nil }, "addrs"},
		{"bad on_error", func(c *policy.RedisConfig) { c.OnError = "open" }, "on_error"},
		{"local without fallback", func(c *policy.RedisConfig) { c.OnError = "local" }, "Fallback"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			tc.edit(&c)
			s, err := FromConfig(context.Background(), c, nil, nil)
			if err == nil {
				s.Close()
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), "redisstore: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to start with redisstore: and mention %q", err, tc.want)
			}
		})
	}
}
