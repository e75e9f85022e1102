package redisstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

// TestShutdownReleasesAtOnce: an instance holding 40 slots shuts down; its
// slots are free for the other instance as soon as Shutdown returns, after
// one round trip, and it leaves the instance registry.
func TestShutdownReleasesAtOnce(t *testing.T) {
	t.Parallel()
	addr := sharedAddr(t)
	prefix := uniquePrefix(t)
	ca, ha := newClient(t, addr)
	cb, _ := newClient(t, addr)
	a := newStore(t, ca, Options{OnError: FailDeny, Prefix: prefix})
	b := newStore(t, cb, Options{OnError: FailDeny, Prefix: prefix, RefreshInterval: 100 * time.Millisecond})
	claims := []policy.Claim{conns("everyone", "global", 40), conns("per-user", "ivy", 40)}
	ctx := context.Background()
	for range 40 {
		if _, v, err := a.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
			t.Fatalf("filling: %+v, %v", v, err)
		}
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("cap exceeded")
	}
	before := ha.n.Load()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	// One pipeline for the leases, and Close's, which has nothing to send.
	if n := ha.n.Load() - before; n != 1 {
		t.Fatalf("Shutdown made %d round trips, want 1", n)
	}
	for i := range 40 {
		if _, v, err := b.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
			t.Fatalf("admission %d after the shutdown: %+v, %v; want the freed slots", i, v, err)
		}
	}
	if _, _, err := a.Admit(ctx, time.Now(), claims); !errors.Is(err, ErrClosed) {
		t.Fatalf("Admit after Shutdown: %v, want ErrClosed", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Snapshot().Instances != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the shut down instance is still in the registry: %+v", b.Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
