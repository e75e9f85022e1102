package redisstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy"
)

// TestLocalShareDuringOutage: three instances with on_error local hold 5
// connections each of a cap of 30 when Redis dies; a burst of 40
// handshakes on each then gets this instance's share: ceil(30/3) = 10 less
// the 5 it holds, so the fleet stays within the cap (the documented bound
// is the cap plus one per instance for rounding). A bucket of burst 30
// (refilling once an hour) is shared the same way: at most 10 per
// instance. When Redis is back, every live connection counts there.
func TestLocalShareDuringOutage(t *testing.T) {
	t.Parallel()
	srv := ownServer(t, "")
	prefix := uniquePrefix(t)
	var stores []*Store
	for range 3 {
		c, _ := newClient(t, srv.addr)
		o := recoveryOpts(prefix, FailLocal)
		o.Fallback = policy.NewMemoryStore()
		stores = append(stores, newStore(t, c, o))
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range stores {
		for s.Snapshot().Instances != 3 {
			if time.Now().After(deadline) {
				t.Fatalf("instances never saw each other: %+v", s.Snapshot())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ctx := context.Background()
	capped := []policy.Claim{conns("everyone", "global", 30)}
	bucketed := []policy.Claim{bucket("handshakes", "global", rate.Every(time.Hour), 30)}
	for _, s := range stores {
		for range 5 {
			if _, v, err := s.Admit(ctx, time.Now(), capped); err != nil || !v.OK {
				t.Fatalf("filling: %+v, %v", v, err)
			}
		}
	}
	srv.kill()
	for _, s := range stores { // wait until each decides without Redis
		for s.Snapshot().Degraded == 0 {
			if _, _, err := s.Admit(ctx, time.Now(), []policy.Claim{conns("probe", "p", 1<<20)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	capAdmitted, rateAdmitted := burst(t, stores, capped), burst(t, stores, bucketed)
	t.Logf("outage burst of 40 per instance: admitted %v under the cap (holding 5 each), %v by the bucket", capAdmitted, rateAdmitted)
	total := 15
	for i := range stores {
		total += capAdmitted[i]
		if capAdmitted[i] != 5 || rateAdmitted[i] != 10 {
			t.Fatalf("instance %d admitted %d under the cap and %d by the bucket, want 5 and 10 (its shares)", i, capAdmitted[i], rateAdmitted[i])
		}
	}
	if total > 30 {
		t.Fatalf("the fleet holds %d connections, cap 30", total)
	}

	srv.restart(t)
	for _, s := range stores {
		waitRecovered(t, s)
	}
	ck, _ := stores[0].keys(&capped[0])
	if got := zcard(t, stores[0].client, ck); got != int64(total) {
		t.Fatalf("after recovery Redis counts %d leases, %d are live", got, total)
	}
	if _, v, _ := stores[0].Admit(ctx, time.Now(), capped); v.OK {
		t.Fatal("admitted past the cap after recovery")
	}
}

// burst makes 40 concurrent admissions on each store and returns how many
// each admitted.
func burst(t *testing.T, stores []*Store, claims []policy.Claim) []int {
	out := make([]int, len(stores))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, s := range stores {
		for range 40 {
			wg.Go(func() {
				_, v, err := s.Admit(context.Background(), time.Now(), claims)
				if err != nil {
					t.Error(err)
				}
				if v.OK {
					mu.Lock()
					out[i]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	return out
}
