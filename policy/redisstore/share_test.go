package redisstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy"
)

// TestLocalShareDuringOutage: three instances with on_error local hold
// connections of one cap when Redis dies, evenly (5 each of 30) or not (15,
// 3 and 0 of 20: the old ceil(C/N) shares let the light instances admit up
// to 7 each, 29 in all). A burst of 40 handshakes per instance then admits
// nothing under the cap: no instance released a slot. Once instance 0 has
// released 3 connections, a second burst admits exactly 3, all on instance
// 0 (it takes over the slots Redis still counts for it): the fleet never
// holds more than it held when Redis died. A bucket of burst 10 (refilling
// once an hour) is shared by rank: 4, 3 and 3. When Redis is back, every
// live connection counts there and the cap refuses.
func TestLocalShareDuringOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		capN int
		held [3]int
	}{{"even", 30, [3]int{5, 5, 5}}, {"unbalanced", 20, [3]int{15, 3, 0}}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			localOutage(t, tc.capN, tc.held)
		})
	}
}

func localOutage(t *testing.T, capN int, fill [3]int) {
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
	capped := []policy.Claim{conns("everyone", "global", capN)}
	bucketed := []policy.Claim{bucket("handshakes", "global", rate.Every(time.Hour), 10)}
	held := make([][]policy.Lease, 3)
	total := 0
	for i, s := range stores {
		for range fill[i] {
			l, v, err := s.Admit(ctx, time.Now(), capped)
			if err != nil || !v.OK {
				t.Fatalf("filling: %+v, %v", v, err)
			}
			held[i] = append(held[i], l)
			total++
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
	if got := burst(t, stores, capped); got[0]+got[1]+got[2] != 0 {
		t.Fatalf("outage burst admitted %v under a full count of %d (cap %d) with no slot released", got, total, capN)
	}
	// Released with the breaker open, so that no removal is sent (one
	// sent and failed might have run: it gives nothing to take over).
	for !stores[0].Snapshot().BreakerOpen {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("breaker never opened: %+v", stores[0].Snapshot())
		}
		_, _, _ = stores[0].Admit(ctx, time.Now(), []policy.Claim{conns("probe", "p", 1<<20)})
		time.Sleep(5 * time.Millisecond)
	}
	for _, l := range held[0][:3] {
		if err := stores[0].Release(ctx, l, capped); err != nil {
			t.Fatal(err)
		}
	}
	capAdmitted := burst(t, stores, capped)
	rateAdmitted := burst(t, stores, bucketed)
	t.Logf("holding %v of cap %d, instance 0 released 3: the burst admitted %v under the cap, %v by the bucket (burst 10)",
		fill, capN, capAdmitted, rateAdmitted)
	if capAdmitted != [3]int{3, 0, 0} {
		t.Fatalf("admitted %v under the cap, want [3 0 0] (the 3 slots instance 0 released)", capAdmitted)
	}
	rateTotal := 0
	for i, s := range stores {
		want := share(10, 3, int(s.rank.Load()))
		if rateAdmitted[i] != want {
			t.Fatalf("instance %d (rank %d) admitted %d by the bucket, want its share %d", i, s.rank.Load(), rateAdmitted[i], want)
		}
		rateTotal += rateAdmitted[i]
	}
	if rateTotal != 10 {
		t.Fatalf("the bucket's shares admitted %d in all, want the burst 10", rateTotal)
	}

	srv.restart(t)
	for _, s := range stores {
		waitRecovered(t, s)
	}
	ck, _ := stores[0].keys(&capped[0])
	if got := zcard(t, stores[0].client, ck); got != int64(total) {
		t.Fatalf("after recovery Redis counts %d leases, %d are live", got, total)
	}
}

// burst makes 40 concurrent admissions on each store and returns how many
// each admitted.
func burst(t *testing.T, stores []*Store, claims []policy.Claim) [3]int {
	var out [3]int
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
