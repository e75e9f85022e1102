package redisstore

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

// recoveryOpts are the options of the recovery tests: leases of 1 s renewed
// every 250 ms, so that a freeze of 2 s outlives them; the failure tests'
// budget and breaker.
func recoveryOpts(prefix string, mode FailMode) Options {
	return Options{
		Prefix: prefix, OnError: mode,
		Timeout: failTimeout, BreakerFailures: 3, BreakerCooldown: 200 * time.Millisecond,
		LeaseTTL: time.Second, RefreshInterval: 250 * time.Millisecond,
	}
}

// fleet is a few in-process instances sharing one Redis and prefix, and
// the live connections the test holds through them.
type fleet struct {
	stores []*Store
	claims []policy.Claim
	capN   int
	live   atomic.Int64 // admitted and not yet released, by the test's count
	over   atomic.Int64 // admissions that found live above the cap
	maxObs atomic.Int64
}

// admit admits on store i and counts the connection. The count is raised
// after Admit returns and lowered before Release, so it never exceeds the
// slots really held: above the cap it proves an over-admission.
func (f *fleet) admit(t *testing.T, i int) (policy.Lease, bool) {
	l, v, err := f.stores[i].Admit(context.Background(), time.Now(), f.claims)
	if err != nil {
		t.Errorf("Admit: %v", err)
		return l, false
	}
	if !v.OK {
		return l, false
	}
	n := f.live.Add(1)
	for m := f.maxObs.Load(); n > m && !f.maxObs.CompareAndSwap(m, n); m = f.maxObs.Load() {
	}
	if n > int64(f.capN) {
		f.over.Add(1)
	}
	return l, true
}

func (f *fleet) release(i int, l policy.Lease) {
	f.live.Add(-1)
	_ = f.stores[i].Release(context.Background(), l, f.claims)
}

// churn runs steady handshakes on every instance (admit, hold 5 ms,
// release) until stop is closed.
func (f *fleet) churn(t *testing.T, stop chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range f.stores {
		for range 3 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if l, ok := f.admit(t, i); ok {
						time.Sleep(5 * time.Millisecond)
						f.release(i, l)
					} else {
						time.Sleep(2 * time.Millisecond)
					}
				}
			})
		}
	}
	return &wg
}

// TestRecoveryNeverExceedsCap: two instances hold 16 connections of a cap
// of 20 while steady handshakes churn on both; Redis is killed and
// restarted empty, or frozen (SIGSTOP) for twice the lease TTL, so that
// every lease in Redis is gone or expired when it answers again. With deny
// and local, the connections live at once never exceed the cap, before,
// during or after the fault: after it, no admission is decided before its
// instance has registered its live leases again, and during it local
// admits only into slots its instance released while Redis could not
// hear it (slots Redis still counts for it).
func TestRecoveryNeverExceedsCap(t *testing.T) {
	t.Parallel()
	for _, fault := range []string{"restart", "freeze"} {
		for _, mode := range []FailMode{FailDeny, FailLocal} {
			t.Run(fault+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				srv := ownServer(t, "")
				f := newFleet(t, srv.addr, mode, 20)
				held := f.fill(t, 8)
				stop := make(chan struct{})
				wg := f.churn(t, stop)
				time.Sleep(300 * time.Millisecond)
				if fault == "restart" {
					srv.kill()
					time.Sleep(300 * time.Millisecond)
					srv.restart(t)
				} else {
					srv.freeze()
					time.Sleep(2 * time.Second)
					srv.thaw()
				}
				for _, s := range f.stores {
					waitRecovered(t, s)
				}
				time.Sleep(500 * time.Millisecond) // churn on the recovered store
				close(stop)
				wg.Wait()
				t.Logf("%s, on_error %s: at most %d live (cap %d), %d over; stats %+v / %+v", fault, mode,
					f.maxObs.Load(), f.capN, f.over.Load(), f.stores[0].Snapshot(), f.stores[1].Snapshot())
				// Bound: the cap, for deny and local alike.
				if m := f.maxObs.Load(); m > int64(f.capN) {
					t.Fatalf("%d admissions found more than %d connections live (at most %d)", f.over.Load(), f.capN, m)
				}
				// Redis counts every live connection again. A release that
				// raced a sync is sent with the next one: poll (the
				// subject is the count, not its timing).
				ck, _ := f.stores[0].keys(&f.claims[0])
				deadline := time.Now().Add(10 * time.Second)
				for {
					got := zcard(t, f.stores[0].client, ck)
					if got == int64(len(held)) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("Redis holds %d leases, %d are live", got, len(held))
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	}
}

// TestRecoveryAllowCountsEveryLease: with on_error allow, once Redis
// answers again after a restart without data, its count equals the live
// connections within one timeout budget, and nothing is admitted while
// they fill the cap.
func TestRecoveryAllowCountsEveryLease(t *testing.T) {
	t.Parallel()
	srv := ownServer(t, "")
	f := newFleet(t, srv.addr, FailAllow, 20)
	held := f.fill(t, 10)
	srv.kill()
	srv.restart(t)
	ck, _ := f.stores[0].keys(&f.claims[0])
	for i := range f.stores {
		// The first admission after the restart finds the data lost: it
		// registers the instance's leases before Redis decides, and is
		// refused by the cap.
		if _, ok := f.admit(t, i); ok {
			t.Fatalf("instance %d admitted with %d live, cap %d", i, f.live.Load(), f.capN)
		}
	}
	// Bound: both instances registered within the admissions above, each
	// bounded by one timeout budget; poll a budget more for the count.
	deadline := time.Now().Add(failTimeout + slack)
	for {
		got := zcard(t, f.stores[0].client, ck)
		if got == int64(len(held)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis holds %d leases, %d are live", got, len(held))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for round := range 20 {
		if _, ok := f.admit(t, round%2); ok {
			t.Fatalf("admitted with %d live, cap %d (stats %+v)", f.live.Load(), f.capN, f.stores[round%2].Snapshot())
		}
	}
	if st := f.stores[0].Snapshot(); st.Lost == 0 || !st.Synced {
		t.Fatalf("stats %+v: want lost leases counted and the store synced", st)
	}
}

func newFleet(t *testing.T, addr string, mode FailMode, capN int) *fleet {
	prefix := uniquePrefix(t)
	f := &fleet{claims: []policy.Claim{conns("everyone", "global", capN)}, capN: capN}
	for range 2 {
		c, _ := newClient(t, addr)
		f.stores = append(f.stores, newStore(t, c, recoveryOpts(prefix, mode)))
	}
	// Each instance learns of the other from the registry at its next sync.
	deadline := time.Now().Add(10 * time.Second)
	for f.stores[0].Snapshot().Instances != 2 || f.stores[1].Snapshot().Instances != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("instances never saw each other: %+v, %+v", f.stores[0].Snapshot(), f.stores[1].Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return f
}

// fill admits perInstance long-lived connections on each instance.
func (f *fleet) fill(t *testing.T, perInstance int) []policy.Lease {
	var held []policy.Lease
	for i := range f.stores {
		for range perInstance {
			l, ok := f.admit(t, i)
			if !ok {
				t.Fatalf("filling: admission %d on instance %d refused", len(held), i)
			}
			held = append(held, l)
		}
	}
	return held
}
