package redisstore

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// runAdmit calls the admission script directly with a member of its own,
// as Admit would, and returns the script's reply.
func runAdmit(t *testing.T, s *Store, member string, claims []policy.Claim) []int64 {
	t.Helper()
	keys, args := s.admitArgs(&lease{member: member}, claims)
	ep := s.epoch()
	args[2], args[3] = ep.id, ep.seq
	res, err := s.sc.admit.Run(context.Background(), s.client, keys, args...).Int64Slice()
	if err != nil {
		t.Fatalf("admission script: %v", err)
	}
	return res
}

// TestAdmitScriptRetryChargesOnce: the admission script run again with the
// member of an admission that committed (a client retry after a lost reply)
// answers yes without taking a second slot or a second token.
func TestAdmitScriptRetryChargesOnce(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t)})
	claims := []policy.Claim{
		bucket("per-ip", "10.0.0.1", rate.Every(time.Hour), 5),
		{Rule: "per-user", Key: keys.String("erin"), Conns: 3, Limit: rate.Every(time.Hour), Burst: 5},
		conns("everyone", "global", 100),
	}
	for try := range 3 {
		want := 5 // {1, full, empty, wait, seq} for the admission
		if try > 0 {
			want = 2 // {1, seq}: the retry found it committed
		}
		if res := runAdmit(t, s, "x:1", claims); len(res) != want || res[0] != 1 {
			t.Fatalf("try %d: reply %v, want %d values starting with 1", try, res, want)
		}
	}
	for i, c := range claims {
		ck, bk := s.keys(&c)
		if c.Conns > 0 {
			if n := zcard(t, s.client, ck); n != 1 {
				t.Fatalf("claim %d holds %d slots after retries, want 1", i, n)
			}
		}
		if hasRate(&c) {
			if tok := bucketTokens(t, s.client, bk); tok < 4 || tok > 4.01 {
				t.Fatalf("claim %d's bucket holds %.4f tokens after retries, want 4", i, tok)
			}
		}
	}
}

// TestRefusalLeavesNothing: the first lease set gets its lease before the
// other claims are checked; a refusal by a later claim takes it back, so a
// set the admission created is gone again and an existing set keeps its
// members and its expiry.
func TestRefusalLeavesNothing(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t)})
	ctx := context.Background()
	fresh := conns("per-ip", "10.0.0.2", 5)
	full := conns("per-user", "frank", 1)
	if res := runAdmit(t, s, "x:1", []policy.Claim{full}); res[0] != 1 {
		t.Fatalf("filling the cap: reply %v", res)
	}
	for _, tc := range []struct {
		name   string
		claims []policy.Claim
		want   []int64
	}{
		{"cap", []policy.Claim{fresh, full}, []int64{0, 2, 1, 0}},
		{"rate", []policy.Claim{fresh, bucket("b", "k", 1, 0)}, []int64{0, 2, 2, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fk, _ := s.keys(&tc.claims[0])
			if res := runAdmit(t, s, "x:2", tc.claims); len(res) != 5 || res[0] != tc.want[0] || res[1] != tc.want[1] || res[2] != tc.want[2] || res[3] != tc.want[3] {
				t.Fatalf("reply %v, want %v", res, tc.want)
			}
			if n, err := c.Exists(ctx, fk).Result(); err != nil || n != 0 {
				t.Fatalf("EXISTS %s = %d, %v: the refused admission left its first lease set", fk, n, err)
			}
		})
	}

	// An existing first set keeps its count and expiry through a refusal.
	if res := runAdmit(t, s, "x:3", []policy.Claim{fresh}); res[0] != 1 {
		t.Fatalf("reply %v", res)
	}
	fk, _ := s.keys(&fresh)
	before := c.PExpireTime(ctx, fk).Val()
	if res := runAdmit(t, s, "x:4", []policy.Claim{fresh, full}); res[0] != 0 {
		t.Fatalf("reply %v, want a refusal", res)
	}
	if n := zcard(t, c, fk); n != 1 {
		t.Fatalf("first set holds %d slots after a refusal, want 1", n)
	}
	if after := c.PExpireTime(ctx, fk).Val(); after != before {
		t.Fatalf("first set's expiry moved from %v to %v on a refusal", before, after)
	}
}

// TestEveryKeyHasTTL: whatever mix of admissions, refusals and releases
// ran, every key the store wrote expires (Redis memory stays bounded).
func TestEveryKeyHasTTL(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	prefix := uniquePrefix(t)
	short := newStore(t, c, Options{OnError: FailDeny, Prefix: prefix, LeaseTTL: time.Second})
	long := newStore(t, c, Options{OnError: FailDeny, Prefix: prefix, LeaseTTL: time.Minute})
	ctx := context.Background()
	claims := []policy.Claim{
		{Rule: "per-ip", Key: keys.String("10.0.0.3"), Conns: 3, Limit: 5, Burst: 4},
		conns("per-user", "gina", 2),
		bucket("per-subnet", "10.0.0.0/24", 2, 6),
		conns("everyone", "global", 1000),
	}
	var held []policy.Lease
	var owners []*Store
	for i := range 40 {
		st := short
		if i%3 == 0 {
			st = long
		}
		l, v, err := st.Admit(ctx, time.Now(), claims[i%2:])
		if err != nil {
			t.Fatal(err)
		}
		if v.OK {
			held, owners = append(held, l), append(owners, st)
		}
		if i%4 == 3 && len(held) > 0 {
			if err := owners[0].Release(ctx, held[0], claims[i%2:]); err != nil {
				t.Fatal(err)
			}
			held, owners = held[1:], owners[1:]
		}
	}
	iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
	n := 0
	for iter.Next(ctx) {
		n++
		if ttl := c.PTTL(ctx, iter.Val()).Val(); ttl <= 0 {
			t.Errorf("key %s: PTTL %v, want an expiry", iter.Val(), ttl)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no keys written")
	}
}

// pipelineHook runs before, once, ahead of the next pipeline the client
// sends after skipping skip of them.
type pipelineHook struct {
	before atomic.Pointer[func()]
	skip   atomic.Int32
}

func (h *pipelineHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipelineHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipelineHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.skip.Add(-1) >= 0 {
			return next(ctx, cmds)
		}
		if f := h.before.Swap(nil); f != nil {
			(*f)()
		}
		return next(ctx, cmds)
	}
}

// TestRefreshRegistersPastCap checks the sync's registration of live
// leases: leases deleted behind the store's back are put back in every set,
// even one whose cap others have filled meanwhile (Redis then counts what
// is really live and refuses until the count is below the cap), and are
// counted as lost; a lease released while the sync is in flight, and put
// back by it, is taken out again.
func TestRefreshRegistersPastCap(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	hook := &pipelineHook{}
	c.AddHook(hook)
	// The refresher's own ticks stay out of the way: the test syncs.
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), LeaseTTL: time.Hour})
	ctx := context.Background()
	tight := conns("per-ip", "10.0.0.4", 2)
	roomy := conns("per-user", "hana", 10)
	claims := []policy.Claim{tight, roomy}
	tk, _ := s.keys(&tight)
	rk, _ := s.keys(&roomy)

	var ls []policy.Lease
	for range 2 {
		l, v, err := s.Admit(ctx, time.Now(), claims)
		if err != nil || !v.OK {
			t.Fatalf("Admit = %+v, %v", v, err)
		}
		ls = append(ls, l)
	}
	members := []string{s.member(ls[0].ID), s.member(ls[1].ID)}

	// Behind the store's back: both leases vanish from both sets, and
	// another instance takes the tight set's two slots.
	for _, k := range []string{tk, rk} {
		if err := c.ZRem(ctx, k, members[0], members[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ZAdd(ctx, tk, redis.Z{Member: "other:1"}, redis.Z{Member: "other:2"}).Err(); err != nil {
		t.Fatal(err)
	}

	if err := s.syncOnce(ctx, syncRefresh); err != nil {
		t.Fatal(err)
	}
	if st := s.Snapshot(); st.Lost != 2 || st.Registered != 2 || st.Pending != 0 || st.Live != 2 {
		t.Fatalf("after the sync: %+v, want Lost 2, Registered 2, nothing pending, 2 live", st)
	}
	for _, k := range []string{tk, rk} {
		for _, m := range members {
			if err := c.ZScore(ctx, k, m).Err(); err != nil {
				t.Fatalf("lease %s not put back in %s: %v", m, k, err)
			}
		}
	}
	if n := zcard(t, c, tk); n != 4 {
		t.Fatalf("tight set holds %d leases, want 4 (past its cap of 2: all are live)", n)
	}
	if err := s.syncOnce(ctx, syncRefresh); err != nil {
		t.Fatal(err)
	}
	if st := s.Snapshot(); st.Lost != 2 || st.Registered != 2 {
		t.Fatalf("a second sync found leases missing again: %+v", st)
	}
	// Redis refuses until the real count is below the cap.
	if err := c.ZRem(ctx, tk, "other:1", "other:2").Err(); err != nil {
		t.Fatal(err)
	}
	if _, v, _ := s.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("admitted with the tight set at its cap")
	}

	// Released while the sync is in flight: the lease is gone from Redis
	// (behind the store's back again), the sync's audit sees it missing and
	// reads the live leases to register them, and the lease is released
	// before that registration (the sync's second pipeline) goes out, so
	// the sync puts it back; the store must take it out again.
	for _, k := range []string{tk, rk} {
		if err := c.ZRem(ctx, k, members[0]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	release := func() {
		if err := s.Release(ctx, ls[0], claims); err != nil {
			t.Error(err)
		}
	}
	hook.skip.Store(1)
	hook.before.Store(&release)
	if err := s.syncOnce(ctx, syncRefresh); err != nil {
		t.Fatal(err)
	}
	if hook.before.Load() != nil {
		t.Fatal("the sync sent no pipeline")
	}
	if st := s.Snapshot(); st.Live != 1 || st.Pending != 2 {
		t.Fatalf("after the racing release: %+v, want 1 live and 2 pending removals", st)
	}
	if err := s.syncOnce(ctx, syncPending); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{tk, rk} {
		if err := c.ZScore(ctx, k, members[0]).Err(); err != redis.Nil {
			t.Fatalf("released lease still in %s: %v", k, err)
		}
		if err := c.ZScore(ctx, k, members[1]).Err(); err != nil {
			t.Fatalf("live lease missing from %s: %v", k, err)
		}
	}
	if st := s.Snapshot(); st.Pending != 0 || st.Live != 1 {
		t.Fatalf("stats = %+v, want nothing pending, 1 live", st)
	}
	if !strings.HasPrefix(members[1], s.instance+":") {
		t.Fatalf("member %q lacks the instance prefix", members[1])
	}
}

// TestAdmitScriptBeforeRedis7 runs the admission script as it runs on a
// server without PEXPIRE ... GT (before 7.0, where REDIS_VERSION_NUM is
// unset): a new lease set gets the lease TTL, and a shorter lease TTL does
// not cut the expiry set by a longer one.
func TestAdmitScriptBeforeRedis7(t *testing.T) {
	const line = "local gt = redis.REDIS_VERSION_NUM ~= nil"
	if !strings.Contains(admitSrc, line) {
		t.Fatal("admitSrc no longer tells Redis 7 by REDIS_VERSION_NUM; update this test")
	}
	old := redis.NewScript(strings.Replace(admitSrc, line, "local gt = false", 1))
	c, long, short := longAndShortLeases(t)
	long.sc.admit, short.sc.admit = old, old
	ctx := context.Background()
	claims := []policy.Claim{conns("r", "pre7", 5)}
	ck, _ := long.keys(&claims[0])
	for _, st := range []*Store{short, long, short} {
		if _, v, err := st.Admit(ctx, time.Now(), claims); err != nil || !v.OK {
			t.Fatalf("Admit = %+v, %v", v, err)
		}
		if st == short && zcard(t, c, ck) == 1 {
			if ttl := c.PTTL(ctx, ck).Val(); ttl <= 0 || ttl > time.Second {
				t.Fatalf("new lease set PTTL = %v, want ~1s", ttl)
			}
		}
	}
	expectLongerLease(t, c, ck)
}

// TestLeaseSetWithoutExpiryGetsOne: a lease set left without an expiry (a
// script that failed after its first write, or a key written by hand) is
// given one by a later admission into it, one in a millisecond that is a
// multiple of 16; PEXPIRE GT alone would take the missing expiry as
// infinite and leave it so.
func TestLeaseSetWithoutExpiryGetsOne(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), LeaseTTL: time.Minute})
	ctx := context.Background()
	claims := []policy.Claim{conns("per-user", "hank", 5)}
	set, _ := s.keys(&claims[0])
	if err := c.ZAdd(ctx, set, redis.Z{Member: "stray"}).Err(); err != nil {
		t.Fatal(err)
	}
	if ttl := c.PTTL(ctx, set).Val(); ttl != -1 {
		t.Fatalf("setup: PTTL %v, want -1 (no expiry)", ttl)
	}
	// The check runs in one millisecond (of Redis's clock) in 16: admit
	// and release until an admission lands in one, for at most 20 s (a
	// loaded machine makes fewer admissions per second, so more seconds).
	deadline := time.Now().Add(20 * time.Second)
	for n := 1; ; n++ {
		l, v, err := s.Admit(ctx, time.Now(), claims)
		if err != nil || !v.OK {
			t.Fatalf("admit: %+v %v", v, err)
		}
		ttl := c.PTTL(ctx, set).Val()
		if err := s.Release(ctx, l, claims); err != nil {
			t.Fatal(err)
		}
		if ttl != -1 {
			if ttl <= 0 || ttl > time.Minute {
				t.Fatalf("after %d admissions: PTTL %v, want an expiry of at most the lease TTL", n, ttl)
			}
			t.Logf("an expiry after %d admissions", n)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d admissions over 20 s the set still has no expiry", n)
		}
	}
}
