package redisstore

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy/penalty"
)

// banInstance is one instance's penalty engine sharing bans through s.
func banInstance(t *testing.T, s *Store) *penalty.Engine {
	t.Helper()
	e := penalty.New(penalty.Options{Shared: s.Bans()})
	p := penalty.Config{Name: "p", Offences: penalty.Offences{Messages: true}, Threshold: 2, Ban: time.Minute}.Params(false, func(f, m string) { t.Fatal(f, m) })
	e.Configure([]penalty.Params{p})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scriptHook counts the round trips that run a script (a ban's store and
// publish), apart from the store's own background calls.
type scriptHook struct{ n atomic.Int64 }

func (h *scriptHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *scriptHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestBansShared: a ban issued by offences on one instance applies on the
// others (subscribed before, and started after: they read it back), costs
// its issuer one round trip, and is lifted everywhere by Unban.
func TestBansShared(t *testing.T) {
	addr := sharedAddr(t)
	prefix := uniquePrefix(t)
	ca, _ := newClient(t, addr)
	cb, _ := newClient(t, addr)
	a := banInstance(t, newStore(t, ca, Options{Prefix: prefix}))
	b := banInstance(t, newStore(t, cb, Options{Prefix: prefix}))
	k := keys.IP(netip.MustParseAddr("192.0.2.7"))
	ta, tb := a.Table("p"), b.Table("p")
	scripts := &scriptHook{}
	ca.AddHook(scripts)
	// A first ban loads the script (EVALSHA, then EVAL on NOSCRIPT);
	// the ban measured is the second.
	warm := keys.IP(netip.MustParseAddr("192.0.2.1"))
	ta.Offend(warm, penalty.KindMessage, time.Now())
	ta.Offend(warm, penalty.KindMessage, time.Now())
	waitFor(t, "warm-up ban not seen by b", func() bool { _, ok := tb.Banned(warm, time.Now()); return ok })
	before := scripts.n.Load()
	ta.Offend(k, penalty.KindMessage, time.Now())
	ta.Offend(k, penalty.KindMessage, time.Now())
	if _, ok := ta.Banned(k, time.Now()); !ok {
		t.Fatal("issuer not banned locally at once")
	}
	waitFor(t, "ban not seen by instance b", func() bool { _, ok := tb.Banned(k, time.Now()); return ok })
	if got := scripts.n.Load() - before; got != 1 {
		t.Fatalf("issuing one ban took %d script round trips, want 1", got)
	}
	left, _ := tb.Banned(k, time.Now())
	if left < 50*time.Second || left > time.Minute {
		t.Fatalf("instance b: %v left, want the issuer's ban (at most 1m, and seconds of slack)", left)
	}
	// An instance started later reads the stored ban.
	cc, _ := newClient(t, addr)
	c := banInstance(t, newStore(t, cc, Options{Prefix: prefix}))
	waitFor(t, "ban not read back by a new instance", func() bool { _, ok := c.Table("p").Banned(k, time.Now()); return ok })
	if _, err := b.Unban(context.Background(), "p", k); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unban not seen by a and c", func() bool {
		_, okA := ta.Banned(k, time.Now())
		_, okC := c.Table("p").Banned(k, time.Now())
		return !okA && !okC
	})
}
