package redisstore

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// argsHook records the commands and arguments of every pipeline the
// client sends.
type argsHook struct {
	mu         sync.Mutex
	cmds, args int
}

func (h *argsHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *argsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *argsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			h.cmds++
			h.args += len(c.Args())
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// take returns the counts since the last call.
func (h *argsHook) take() (cmds, args int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmds, args = h.cmds, h.args
	h.cmds, h.args = 0, 0
	return cmds, args
}

// TestKeepAliveDoesNotGrowWithLeases: a sync sends as much for 300 live
// leases in a lease set as for 3, grows by one entry per further lease set
// held, and still finds leases deleted behind the store's back.
func TestKeepAliveDoesNotGrowWithLeases(t *testing.T) {
	c, _ := newClient(t, sharedAddr(t))
	hook := &argsHook{}
	c.AddHook(hook)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), LeaseTTL: time.Hour})
	ctx := context.Background()
	everyone := []policy.Claim{conns("everyone", "global", 1000)}
	admit := func(claims []policy.Claim, n int) []policy.Lease {
		var ls []policy.Lease
		for range n {
			l, v, err := s.Admit(ctx, time.Now(), claims)
			if err != nil || !v.OK {
				t.Fatalf("Admit = %+v, %v", v, err)
			}
			ls = append(ls, l)
		}
		return ls
	}
	syncNow := func() (cmds, args int) {
		t.Helper()
		hook.take()
		if err := s.syncOnce(ctx, syncRefresh); err != nil {
			t.Fatal(err)
		}
		return hook.take()
	}
	admit(everyone, 3)
	syncNow() // the first sync after admissions may register; measure the next
	c3, a3 := syncNow()
	ls := admit(everyone, 297)
	c300, a300 := syncNow()
	t.Logf("a sync with 3 leases: %d commands, %d arguments; with 300: %d, %d", c3, a3, c300, a300)
	if c300 != c3 || a300 != a3 {
		t.Fatalf("a sync with 300 leases in one set sent %d commands and %d arguments, with 3: %d and %d", c300, a300, c3, a3)
	}
	admit([]policy.Claim{conns("per-user", "ivy", 5)}, 2)
	if c, a := syncNow(); c != c3 || a != a3+3 {
		t.Fatalf("a second lease set: %d commands, %d arguments; want %d and %d (its key, its hash, its count)", c, a, c3, a3+3)
	}

	// Behind the store's back: one lease gone. The audit sees it and the
	// same sync registers it again.
	ck, _ := s.keys(&everyone[0])
	if err := c.ZRem(ctx, ck, s.member(ls[0].ID)).Err(); err != nil {
		t.Fatal(err)
	}
	syncNow()
	if st := s.Snapshot(); st.Lost != 1 {
		t.Fatalf("after a lease was deleted: %+v, want Lost 1", st)
	}
	if n := zcard(t, c, ck); n != 300 {
		t.Fatalf("lease set holds %d, want 300", n)
	}
}

// BenchmarkKeepAlive measures one sync (heartbeat and keep-alive) of an
// instance on a private redis-server, by the number of leases and lease
// sets it holds ("shared": another instance holds leases in every set too,
// which gives each an instance hash): redis-µs/op is the sync's script time (INFO
// commandstats), calls/op the redis.calls inside, args/op what it sends.
func BenchmarkKeepAlive(b *testing.B) {
	srv := ownServer(b, "")
	for _, tc := range []struct {
		name      string
		sets, per int
		shared    bool // another instance holds a lease in every set too
	}{
		{"sets=1/leases=10", 1, 10, false},
		{"sets=1/leases=10000", 1, 10000, false},
		{"sets=1000/leases=1000", 1000, 1, false},
		{"sets=1000/leases=1000/shared", 1000, 1, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, _ := newClient(b, srv.addr)
			hook := &argsHook{}
			c.AddHook(hook)
			ctx := context.Background()
			s, err := New(ctx, c, Options{OnError: FailDeny, Prefix: uniquePrefix(b), LeaseTTL: time.Hour, Timeout: 5 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer dropStore(b, s)
			other := s
			if tc.shared {
				oc, _ := newClient(b, srv.addr)
				other, err = New(ctx, oc, Options{OnError: FailDeny, Prefix: s.prefix, LeaseTTL: time.Hour, Timeout: 5 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = other.Close() }()
			}
			for k := range tc.sets {
				claims := []policy.Claim{conns("r", "k"+strconv.Itoa(k), tc.per+1)}
				for _, st := range []*Store{s, other} {
					for range tc.per {
						if _, v, err := st.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
							b.Fatalf("Admit = %+v, %v", v, err)
						}
					}
					if !tc.shared {
						break
					}
				}
			}
			if err := s.syncOnce(ctx, syncRefresh); err != nil {
				b.Fatal(err)
			}
			if err := c.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			hook.take()
			b.ResetTimer()
			for range b.N {
				if err := s.syncOnce(ctx, syncRefresh); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			_, args := hook.take()
			var usec float64
			var calls int64
			for name, cs := range commandStats(b, c) {
				switch name {
				case "evalsha", "eval":
					usec += cs.usec
				case "config|resetstat", "info":
				default:
					calls += cs.calls
				}
			}
			n := float64(b.N)
			b.ReportMetric(usec/n, "redis-µs/op")
			b.ReportMetric(float64(calls)/n, "calls/op")
			b.ReportMetric(float64(args)/n, "args/op")
		})
	}
}

// TestInstanceIDHasNoRangeSeparators: a configured name with ':' or ';'
// cannot make one instance's lex range of members cover another's.
func TestInstanceIDHasNoRangeSeparators(t *testing.T) {
	o, err := Options{InstanceID: "a:b;c", OnError: FailDeny}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if name, _, ok := strings.Cut(o.InstanceID, "."); !ok || name != "a_b_c" || strings.ContainsAny(o.InstanceID, ":;") {
		t.Fatalf("InstanceID = %q, want a_b_c.<suffix>", o.InstanceID)
	}
}

// TestCrashedInstanceSweptFromSharedSet: in a lease set two instances hold
// leases in (so it has an instance hash), the leases of one that stops
// refreshing without releasing (a crash) are swept by the other's
// admissions once its entry has expired: its two slots come back within
// LeaseTTL + one refresh (+1 s of polling slack on a loaded machine), not
// before LeaseTTL - 2 refreshes, and no more than two.
func TestCrashedInstanceSweptFromSharedSet(t *testing.T) {
	t.Parallel()
	addr := sharedAddr(t)
	const ttl, every, pollSlack = 3 * time.Second, time.Second, time.Second
	stores := instances(t, addr, 2, Options{OnError: FailAllow, LeaseTTL: ttl, RefreshInterval: every})
	a, b := stores[0], stores[1]
	claims := []policy.Claim{conns("per-user", "dora", 4)}
	ctx := context.Background()
	for _, s := range []*Store{a, b, a, b} {
		if _, v, _ := s.Admit(ctx, time.Now(), claims); !v.OK {
			t.Fatal("admission refused")
		}
	}
	ck, _ := a.keys(&claims[0])
	if n, err := a.client.HLen(ctx, hashOf(ck)).Result(); err != nil || n != 2 {
		t.Fatalf("instance hash of a shared set: %d entries (%v), want 2", n, err)
	}
	time.Sleep(ttl + every) // leases outlive their TTL while both refresh
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("cap exceeded while a was alive")
	}

	a.Close() // the crash
	awaitSlotBack(t, b, claims, time.Now(), ttl, every, pollSlack)
	if _, v, _ := b.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatal("the second slot of the crashed instance did not come back")
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("admitted past the cap after the sweep")
	}
	if n := zcard(t, b.client, ck); n != 4 {
		t.Fatalf("lease set holds %d, want 4 (b's)", n)
	}
}

// TestSingleOwnerSetHasNoHash: a lease set whose leases are all one
// instance's has no instance hash (its expiry vouches for them), one
// whose members it had before is dropped when a set starts again, and
// the set keeps an expiry through admissions and syncs.
func TestSingleOwnerSetHasNoHash(t *testing.T) {
	stores := instances(t, sharedAddr(t), 2, Options{OnError: FailDeny, LeaseTTL: time.Minute})
	a, b := stores[0], stores[1]
	ctx := context.Background()
	claims := []policy.Claim{conns("per-ip", "10.9.0.1", 5)}
	ck, _ := a.keys(&claims[0])
	exists := func(k string) bool {
		n, err := a.client.Exists(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	admit := func(s *Store) policy.Lease {
		l, v, err := s.Admit(ctx, time.Now(), claims)
		if err != nil || !v.OK {
			t.Fatalf("Admit = %+v, %v", v, err)
		}
		return l
	}
	la := []policy.Lease{admit(a), admit(a)}
	if err := a.syncOnce(ctx, syncRefresh); err != nil {
		t.Fatal(err)
	}
	if exists(hashOf(ck)) {
		t.Fatal("a set with one owner has an instance hash")
	}
	if ttl := a.client.PTTL(ctx, ck).Val(); ttl <= 50*time.Second {
		t.Fatalf("single-owner set PTTL = %v, want ~1m", ttl)
	}
	lb := admit(b)
	if !exists(hashOf(ck)) {
		t.Fatal("a second owner made no instance hash")
	}
	for _, l := range la {
		if err := a.Release(ctx, l, claims); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Release(ctx, lb, claims); err != nil {
		t.Fatal(err)
	}
	admit(a) // starts the set again
	if exists(hashOf(ck)) {
		t.Fatal("the hash of the set's earlier owners outlived its start again")
	}
}

// TestAuditMakesMissingHash: a set that holds another instance's members
// but no instance hash (the single-owner rule broken, as by an admission
// that raced a release of the set's last lease) gets one at the next sync
// of an instance with leases in it, with an entry for each owner, so that
// either's crash can be swept.
func TestAuditMakesMissingHash(t *testing.T) {
	c, _ := newClient(t, sharedAddr(t))
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), LeaseTTL: time.Minute})
	ctx := context.Background()
	claims := []policy.Claim{conns("per-user", "lena", 5)}
	if _, v, err := s.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
		t.Fatalf("Admit = %+v, %v", v, err)
	}
	ck, _ := s.keys(&claims[0])
	if err := c.ZAdd(ctx, ck, redis.Z{Member: "zz:1"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.syncOnce(ctx, syncRefresh); err != nil {
		t.Fatal(err)
	}
	h, err := c.HGetAll(ctx, hashOf(ck)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[s.instance] == "" || h["zz"] == "" {
		t.Fatalf("instance hash = %v, want entries for %s and zz", h, s.instance)
	}
}
