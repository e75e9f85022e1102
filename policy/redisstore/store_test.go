package redisstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// memStore is a minimal in-memory policy.Store with connection caps only,
// standing in for the engine's memory store as the on_error local fallback.
type memStore struct {
	mu     sync.Mutex
	counts map[string]int
	leases map[uint64][]string
	next   uint64
}

func newMemStore() *memStore {
	return &memStore{counts: map[string]int{}, leases: map[uint64][]string{}}
}

func (m *memStore) Admit(_ context.Context, _ time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var held []string
	for i, c := range claims {
		k := c.Rule + "|" + c.Key.String()
		if c.Conns > 0 && m.counts[k] >= c.Conns {
			return policy.Lease{}, policy.Verdict{Index: i, Reason: policy.ReasonConnections}, nil
		}
		if c.Conns > 0 {
			held = append(held, k)
		}
	}
	for _, k := range held {
		m.counts[k]++
	}
	m.next++
	m.leases[m.next] = held
	return policy.Lease{ID: m.next}, policy.Verdict{OK: true}, nil
}

func (m *memStore) Release(_ context.Context, l policy.Lease, _ []policy.Claim) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.leases[l.ID] {
		if m.counts[k]--; m.counts[k] == 0 {
			delete(m.counts, k)
		}
	}
	delete(m.leases, l.ID)
	return nil
}

func (m *memStore) Close() error { return nil }

// testTimeout is the store timeout of tests whose subject is not a timeout:
// seconds, so that a stall of the loaded test machine (race detector, other
// test binaries, GC) makes a call slower, never degraded.
const testTimeout = 5 * time.Second

// newStore returns a Store on client, closed at the end of the test. An
// unset Timeout gets testTimeout; an unset Fallback of on_error local gets
// a memStore.
func newStore(t testing.TB, client redis.UniversalClient, o Options) *Store {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = testTimeout
	}
	if o.OnError == FailLocal && o.Fallback == nil {
		o.Fallback = newMemStore()
	}
	s, err := New(context.Background(), client, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// instances returns n stores on n clients of addr sharing one prefix: n
// simulated instances.
func instances(t testing.TB, addr string, n int, o Options) []*Store {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = uniquePrefix(t)
	}
	out := make([]*Store, n)
	for i := range out {
		c, _ := newClient(t, addr)
		o.InstanceID = "inst" + strconv.Itoa(i)
		out[i] = newStore(t, c, o)
	}
	return out
}

func conns(rule, key string, n int) policy.Claim {
	return policy.Claim{Rule: rule, Key: keys.String(key), Conns: n}
}

func bucket(rule, key string, per rate.Limit, burst int) policy.Claim {
	return policy.Claim{Rule: rule, Key: keys.String(key), Limit: per, Burst: burst}
}

// held is one admitted lease and the store that holds it.
type held struct {
	s      *Store
	lease  policy.Lease
	claims []policy.Claim
}

// hammer makes every store admit claims from workers goroutines, tries
// times each, all at once. It returns the admitted leases and the refusals.
func hammer(t *testing.T, stores []*Store, workers, tries int, claims []policy.Claim) ([]held, []policy.Verdict) {
	t.Helper()
	var (
		mu       sync.Mutex
		admitted []held
		refused  []policy.Verdict
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	for _, s := range stores {
		for range workers {
			wg.Go(func() {
				<-start
				for range tries {
					l, v, err := s.Admit(context.Background(), time.Now(), claims)
					if err != nil {
						t.Errorf("Admit: %v", err)
						return
					}
					mu.Lock()
					if v.OK {
						admitted = append(admitted, held{s, l, claims})
					} else {
						refused = append(refused, v)
					}
					mu.Unlock()
				}
			})
		}
	}
	close(start)
	wg.Wait()
	for _, s := range stores {
		if st := s.Snapshot(); st.Degraded != 0 || st.Errors != 0 {
			t.Fatalf("a store failed over during the test: %+v", st)
		}
	}
	return admitted, refused
}

func releaseAll(t *testing.T, hs []held) {
	t.Helper()
	for _, h := range hs {
		if err := h.s.Release(context.Background(), h.lease, h.claims); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
}

func zcard(t testing.TB, c redis.UniversalClient, key string) int64 {
	t.Helper()
	n, err := c.ZCard(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("ZCARD %s: %v", key, err)
	}
	return n
}

// TestExactCapAcrossInstances: three instances hammering one key with cap N
// admit exactly N, and after releasing everything exactly N again.
func TestExactCapAcrossInstances(t *testing.T) {
	addr := sharedAddr(t)
	stores := instances(t, addr, 3, Options{OnError: FailAllow})
	const capN = 7
	claims := []policy.Claim{conns("per-user", "alice", capN)}
	for round := range 2 {
		admitted, refused := hammer(t, stores, 8, 5, claims)
		if got := len(admitted); got != capN {
			t.Fatalf("round %d: admitted %d of %d, want exactly %d", round, got, 3*8*5, capN)
		}
		for _, v := range refused {
			if v.Reason != policy.ReasonConnections || v.Index != 0 {
				t.Fatalf("refusal = %+v, want connections on claim 0", v)
			}
		}
		ck, _ := stores[0].keys(&claims[0])
		if got := zcard(t, stores[0].client, ck); got != capN {
			t.Fatalf("ZCARD = %d, want %d", got, capN)
		}
		releaseAll(t, admitted)
		if got := zcard(t, stores[0].client, ck); got != 0 {
			t.Fatalf("after releasing all: ZCARD = %d, want 0", got)
		}
	}
}

// TestAllOrNothingAcrossInstances: when a later rule refuses, the earlier
// rules hold no slot and have spent no token, under contention from three
// instances.
func TestAllOrNothingAcrossInstances(t *testing.T) {
	addr := sharedAddr(t)
	tests := []struct {
		name      string
		claims    []policy.Claim
		want      int
		refuseIdx int
		reason    policy.Reason
	}{
		{
			name: "cap refuses second",
			claims: []policy.Claim{
				policy.Claim{Rule: "per-ip", Key: keys.String("k"), Conns: 50, Limit: rate.Every(time.Hour), Burst: 50},
				conns("per-user", "k", 3),
			},
			want: 3, refuseIdx: 1, reason: policy.ReasonConnections,
		},
		{
			name: "rate refuses second",
			claims: []policy.Claim{
				policy.Claim{Rule: "per-ip", Key: keys.String("k"), Conns: 50, Limit: rate.Every(time.Hour), Burst: 50},
				bucket("per-user", "k", rate.Every(time.Hour), 4),
			},
			want: 4, refuseIdx: 1, reason: policy.ReasonRate,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stores := instances(t, addr, 3, Options{OnError: FailAllow})
			admitted, refused := hammer(t, stores, 10, 3, tc.claims)
			if len(admitted) != tc.want {
				t.Fatalf("admitted %d, want %d", len(admitted), tc.want)
			}
			for _, v := range refused {
				if v.Index != tc.refuseIdx || v.Reason != tc.reason {
					t.Fatalf("refusal = %+v, want %v on claim %d", v, tc.reason, tc.refuseIdx)
				}
			}
			c := stores[0].client
			ck, bk := stores[0].keys(&tc.claims[0])
			if got := zcard(t, c, ck); got != int64(tc.want) {
				t.Fatalf("first rule holds %d slots, want %d (refusals must hold nothing)", got, tc.want)
			}
			tok := bucketTokens(t, c, bk)
			// One token per hour refills ~0.0003 per second of test.
			if want := float64(50 - tc.want); tok < want || tok > want+0.01 {
				t.Fatalf("first rule's bucket holds %.4f tokens, want %v (refusals must spend nothing)", tok, want)
			}
		})
	}
}

// bucketTokens reads the tokens a bucket key holds ("<tokens> <ms>").
func bucketTokens(t testing.TB, c redis.UniversalClient, key string) float64 {
	t.Helper()
	v, err := c.Get(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	tk, ms, ok := strings.Cut(v, " ")
	if _, err := strconv.ParseInt(ms, 10, 64); !ok || err != nil {
		t.Fatalf("bucket %s = %q, want \"<tokens> <ms>\"", key, v)
	}
	f, err := strconv.ParseFloat(tk, 64)
	if err != nil {
		t.Fatalf("bucket %s = %q: %v", key, v, err)
	}
	return f
}

// TestReleaseExactlyOnce: a second Release of a lease, from any goroutine or
// instance, frees nothing more.
func TestReleaseExactlyOnce(t *testing.T) {
	addr := sharedAddr(t)
	stores := instances(t, addr, 2, Options{OnError: FailAllow})
	a, b := stores[0], stores[1]
	claims := []policy.Claim{conns("per-user", "bob", 2), conns("everyone", "global", 100)}
	ctx := context.Background()
	admit := func(s *Store) (policy.Lease, bool) {
		t.Helper()
		l, v, err := s.Admit(ctx, time.Now(), claims)
		if err != nil {
			t.Fatal(err)
		}
		return l, v.OK
	}
	l1, ok1 := admit(a)
	l2, ok2 := admit(a)
	if _, ok := admit(b); !ok1 || !ok2 || ok {
		t.Fatalf("admissions = %v %v %v, want true true false", ok1, ok2, ok)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if err := a.Release(ctx, l1, claims); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// The other instance does not hold a lease with that ID: nothing happens.
	if err := b.Release(ctx, l1, claims); err != nil {
		t.Fatal(err)
	}
	ck, _ := a.keys(&claims[0])
	if got := zcard(t, a.client, ck); got != 1 {
		t.Fatalf("after releasing one of two leases (11 times): ZCARD = %d, want 1", got)
	}
	if _, ok := admit(b); !ok {
		t.Fatal("the freed slot was not admitted")
	}
	if _, ok := admit(b); ok {
		t.Fatal("double release freed a second slot")
	}
	if err := a.Release(ctx, l2, claims); err != nil {
		t.Fatal(err)
	}
	if got := a.Snapshot().Live; got != 0 {
		t.Fatalf("live leases = %d, want 0", got)
	}
}

// TestRateUsesServerTime: a burst of B admits exactly B at once across
// instances; refusals carry the real refill time; the caller's now does not
// matter.
func TestRateUsesServerTime(t *testing.T) {
	t.Parallel()
	addr := sharedAddr(t)
	stores := instances(t, addr, 3, Options{OnError: FailAllow})
	claims := []policy.Claim{bucket("per-ip", "10.0.0.1", rate.Every(time.Minute), 5)}
	admitted, refused := hammer(t, stores, 10, 3, claims)
	if len(admitted) != 5 {
		t.Fatalf("admitted %d, want the burst 5", len(admitted))
	}
	for _, v := range refused {
		if v.Reason != policy.ReasonRate || v.RetryAfter <= 0 || v.RetryAfter > time.Minute {
			t.Fatalf("refusal = %+v, want rate with 0 < RetryAfter <= 1m", v)
		}
	}
	// A caller clock an hour ahead mints nothing.
	_, v, err := stores[0].Admit(context.Background(), time.Now().Add(time.Hour), claims)
	if err != nil || v.OK {
		t.Fatalf("Admit with now+1h = %+v, %v; want refused", v, err)
	}

	// Refill: one token per 2 s, burst 1. The second handshake waits up to
	// 2 s: slow enough that no stall between the two calls refills it.
	fast := []policy.Claim{bucket("fast", "k", 0.5, 1)}
	if _, v, _ := stores[0].Admit(context.Background(), time.Now(), fast); !v.OK {
		t.Fatal("first handshake refused")
	}
	_, v, _ = stores[1].Admit(context.Background(), time.Now(), fast)
	if v.OK || v.RetryAfter <= 0 || v.RetryAfter > 2*time.Second {
		t.Fatalf("second handshake = %+v, want refused with 0 < RetryAfter <= 2s", v)
	}
	time.Sleep(v.RetryAfter + 5*time.Millisecond)
	if _, v, _ := stores[2].Admit(context.Background(), time.Now(), fast); !v.OK {
		t.Fatalf("after RetryAfter: %+v, want admitted", v)
	}
}

// TestCrashedInstanceSlotsReturn: an instance that stops refreshing without
// releasing (a crash) has its slots back within LeaseTTL + one refresh.
//
// Bounds: the slots come back no earlier than LeaseTTL - 2 refreshes after
// the crash (a late refresher only makes them come back earlier, so the
// margin is one refresh) and no later than LeaseTTL + one refresh + 1 s,
// the slack for this test's own polling on a loaded machine. The TTL is
// seconds long so that the live instance's refreshes, 1 s apart, keep its
// leases through stalls of up to 2 s.
func TestCrashedInstanceSlotsReturn(t *testing.T) {
	t.Parallel()
	addr := sharedAddr(t)
	const ttl, every, pollSlack = 3 * time.Second, time.Second, time.Second
	stores := instances(t, addr, 2, Options{OnError: FailAllow, LeaseTTL: ttl, RefreshInterval: every})
	a, b := stores[0], stores[1]
	claims := []policy.Claim{conns("per-user", "carol", 3)}
	ctx := context.Background()
	for range 3 {
		if _, v, _ := a.Admit(ctx, time.Now(), claims); !v.OK {
			t.Fatal("admission refused")
		}
	}
	time.Sleep(ttl + every) // leases outlive their TTL while a refreshes them
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("cap exceeded while a was alive")
	}

	a.Close() // the crash: the refresher stops, nothing is released
	awaitSlotBack(t, b, claims, time.Now(), ttl, every, pollSlack)
}

// TestRefreshKeepsLeasesAlive: live leases outlast their TTL. The TTL is
// seconds long, refreshed every TTL/3, so that a refresher stalled for up
// to 2/3 of it on a loaded machine still keeps them.
func TestRefreshKeepsLeasesAlive(t *testing.T) {
	t.Parallel()
	addr := sharedAddr(t)
	const ttl = 2 * time.Second
	stores := instances(t, addr, 2, Options{OnError: FailAllow, LeaseTTL: ttl})
	a, b := stores[0], stores[1]
	claims := []policy.Claim{conns("per-user", "dave", 2), conns("per-ip", "1.2.3.4", 5)}
	ctx := context.Background()
	var ls []policy.Lease
	for range 2 {
		l, v, _ := a.Admit(ctx, time.Now(), claims)
		if !v.OK {
			t.Fatal("admission refused")
		}
		ls = append(ls, l)
	}
	time.Sleep(2 * ttl)
	ck0, _ := a.keys(&claims[0])
	ck1, _ := a.keys(&claims[1])
	if n0, n1 := zcard(t, a.client, ck0), zcard(t, a.client, ck1); n0 != 2 || n1 != 2 {
		t.Fatalf("after 2 TTLs: slots = %d, %d; want 2, 2", n0, n1)
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); v.OK {
		t.Fatal("cap exceeded: refreshed leases were not counted")
	}
	for _, l := range ls {
		a.Release(ctx, l, claims)
	}
	if _, v, _ := b.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatalf("after release: %+v, want admitted", v)
	}
	if n, err := a.client.Exists(ctx, ck0).Result(); err != nil || n != 1 {
		t.Fatalf("EXISTS = %d, %v", n, err)
	}
}

// awaitSlotBack admits on b until claims are admitted again after the
// crash of another instance at crashed, and fails unless that took at
// most ttl + every (+pollSlack for the polling on a loaded machine) and at
// least ttl - 2 refreshes (before that the lease could not have run out).
func awaitSlotBack(t *testing.T, b *Store, claims []policy.Claim, crashed time.Time, ttl, every, pollSlack time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := crashed.Add(ttl + every + 10*time.Second)
	for {
		_, v, err := b.Admit(ctx, time.Now(), claims)
		if err != nil {
			t.Fatal(err)
		}
		if v.OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slots of the crashed instance never came back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(crashed)
	t.Logf("slots came back %v after the crash (TTL %v, refresh %v)", took.Round(time.Millisecond), ttl, every)
	if took > ttl+every+pollSlack {
		t.Fatalf("slots came back after %v, want within TTL + refresh = %v (+%v polling slack)", took, ttl+every, pollSlack)
	}
	if took < ttl-2*every {
		t.Fatalf("slots came back after %v, before the lease TTL could have run out", took)
	}
}

// TestKeysExpire: idle keys get expiries: a lease set expires with its
// last lease, a bucket when it has refilled. The expiries are seconds
// long, so a stall before they are read cannot let them run out.
func TestKeysExpire(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailAllow, Prefix: uniquePrefix(t), LeaseTTL: 10 * time.Second})
	ctx := context.Background()
	claims := []policy.Claim{policy.Claim{Rule: "r", Key: keys.String("k"), Conns: 2, Limit: 0.25, Burst: 5}}
	if _, v, _ := s.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatal("refused")
	}
	ck, bk := s.keys(&claims[0])
	if ttl := c.PTTL(ctx, ck).Val(); ttl <= 5*time.Second || ttl > 10*time.Second {
		t.Fatalf("lease set PTTL = %v, want ~10s", ttl)
	}
	// One token spent at 0.25/s: full again in 4 s.
	if ttl := c.PTTL(ctx, bk).Val(); ttl <= 0 || ttl > 4*time.Second {
		t.Fatalf("bucket PTTL = %v, want <= 4s", ttl)
	}
}

// TestLeaseSetOutlivesLongestLease: an admission by an instance with a
// shorter lease TTL does not cut the lease set's expiry below the leases of
// an instance with a longer one.
func TestLeaseSetOutlivesLongestLease(t *testing.T) {
	c, long, short := longAndShortLeases(t)
	ctx := context.Background()
	claims := []policy.Claim{conns("r", "mixed", 5)}
	if _, v, _ := long.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatal("refused")
	}
	if _, v, _ := short.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatal("refused")
	}
	ck, _ := long.keys(&claims[0])
	expectLongerLease(t, c, ck)
}

// longAndShortLeases returns a client and two stores sharing one prefix,
// one with 10 s leases and one with 1 s leases.
func longAndShortLeases(t *testing.T) (c *redis.Client, long, short *Store) {
	c, _ = newClient(t, sharedAddr(t))
	prefix := uniquePrefix(t)
	long = newStore(t, c, Options{OnError: FailDeny, Prefix: prefix, LeaseTTL: 10 * time.Second})
	short = newStore(t, c, Options{OnError: FailDeny, Prefix: prefix, LeaseTTL: time.Second})
	return c, long, short
}

// expectLongerLease fails unless lease set ck expires with the longer
// (10 s) lease.
func expectLongerLease(t *testing.T, c *redis.Client, ck string) {
	t.Helper()
	if ttl := c.PTTL(context.Background(), ck).Val(); ttl <= 9*time.Second {
		t.Fatalf("lease set PTTL = %v, want ~10s (the longer lease)", ttl)
	}
}

// TestExpiredLeasesSweptWhenFull: expired members left by a crashed
// instance are not swept while the set has room, and are swept (freeing
// their slots) once they would make the set look full.
func TestExpiredLeasesSweptWhenFull(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), LeaseTTL: time.Hour})
	ctx := context.Background()
	claims := []policy.Claim{conns("r", "sweep", 3)}
	ck, _ := s.keys(&claims[0])
	// Two leases of a dead instance, whose entry expired long ago.
	if err := c.ZAdd(ctx, ck, redis.Z{Member: "dead:1"}, redis.Z{Member: "dead:2"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.HSet(ctx, hashOf(ck), "dead", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if _, v, _ := s.Admit(ctx, time.Now(), claims); !v.OK {
		t.Fatalf("first admission: %+v", v)
	}
	for i := range 2 {
		if _, v, _ := s.Admit(ctx, time.Now(), claims); !v.OK {
			t.Fatalf("admission %d with expired members in the set: %+v", i+2, v)
		}
	}
	if n := zcard(t, c, ck); n != 3 {
		t.Fatalf("ZCARD = %d, want 3 live leases (expired ones swept)", n)
	}
	if _, v, _ := s.Admit(ctx, time.Now(), claims); v.OK || v.Reason != policy.ReasonConnections {
		t.Fatalf("fourth admission: %+v, want refused by the cap", v)
	}
}

// TestOneRoundTrip counts the commands sent: one per Admit and one per
// Release, whatever the number of rules.
func TestOneRoundTrip(t *testing.T) {
	addr := sharedAddr(t)
	for _, n := range []int{1, 4} {
		t.Run(strconv.Itoa(n)+" rules", func(t *testing.T) {
			c, hook := newClient(t, addr)
			s := newStore(t, c, Options{OnError: FailAllow, Prefix: uniquePrefix(t)})
			claims := benchClaims(n)
			ctx := context.Background()
			hook.n.Store(0)
			const rounds = 20
			for i := range rounds {
				l, v, err := s.Admit(ctx, time.Now(), claims)
				if err != nil || !v.OK {
					t.Fatalf("Admit = %+v, %v", v, err)
				}
				if got := hook.n.Load(); got != int64(2*i+1) {
					t.Fatalf("round trips after %d admissions = %d, want %d", i+1, got, 2*i+1)
				}
				if err := s.Release(ctx, l, claims); err != nil {
					t.Fatal(err)
				}
				if got := hook.n.Load(); got != int64(2*i+2) {
					t.Fatalf("round trips after %d releases = %d, want %d", i+1, got, 2*i+2)
				}
			}
		})
	}
}

// benchClaims returns n rules, each with a cap and a bucket that never
// refuse.
// benchOp returns one benchmark operation: an admission of claims, and its
// release when release is set. Failures are reported with Errorf, so the
// operation may run on RunParallel's goroutines.
func benchOp(b *testing.B, ctx context.Context, s *Store, claims []policy.Claim, release bool) func() {
	return func() {
		l, v, err := s.Admit(ctx, time.Now(), claims)
		if err != nil || !v.OK {
			b.Errorf("Admit = %+v, %v", v, err)
			return
		}
		if release {
			if err := s.Release(ctx, l, claims); err != nil {
				b.Error(err)
			}
		}
	}
}

func benchClaims(n int) []policy.Claim {
	names := []string{"per-ip", "per-subnet", "per-user", "everyone"}
	out := make([]policy.Claim, n)
	for i := range out {
		out[i] = policy.Claim{Rule: names[i%len(names)], Key: keys.String("bench"), Conns: 1 << 30, Limit: 1e9, Burst: 1 << 30}
	}
	return out
}

// TestNoClaimsNoRoundTrip: claims without caps or buckets need no Redis.
func TestNoClaimsNoRoundTrip(t *testing.T) {
	addr := sharedAddr(t)
	c, hook := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailAllow, Prefix: uniquePrefix(t)})
	hook.n.Store(0)
	claims := []policy.Claim{policy.Claim{Rule: "r", Key: keys.Global(), Limit: rate.Inf}}
	l, v, err := s.Admit(context.Background(), time.Now(), claims)
	if err != nil || !v.OK {
		t.Fatalf("Admit = %+v, %v", v, err)
	}
	s.Release(context.Background(), l, claims)
	if n := hook.n.Load(); n != 0 {
		t.Fatalf("round trips = %d, want 0", n)
	}
}

func TestNewValidates(t *testing.T) {
	plain := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { plain.Close() })
	good := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	t.Cleanup(func() { good.Close() })
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cluster.Close() })
	tests := []struct {
		name   string
		client redis.UniversalClient
		opts   Options
		ok     bool
	}{
		{"no context timeouts", plain, Options{OnError: FailDeny}, false},
		{"local without fallback", good, Options{}, false},
		{"refresh not below TTL", good, Options{OnError: FailDeny, LeaseTTL: time.Second, RefreshInterval: time.Second}, false},
		{"negative timeout", good, Options{OnError: FailDeny, Timeout: -1}, false},
		{"cluster without hash tag", cluster, Options{OnError: FailDeny, Timeout: 5 * time.Millisecond}, false},
		{"cluster with hash tag", cluster, Options{OnError: FailDeny, Prefix: "{wslimit}:", Timeout: 5 * time.Millisecond}, true},
		{"unreachable Redis is not fatal", good, Options{OnError: FailDeny, Timeout: 5 * time.Millisecond}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(context.Background(), tc.client, tc.opts)
			if (err == nil) != tc.ok {
				t.Fatalf("New: err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				if got := err.Error(); len(got) < 12 || got[:12] != "redisstore: " {
					t.Fatalf("error %q does not start with the package name", got)
				}
				return
			}
			s.Close()
			if _, _, err := s.Admit(context.Background(), time.Now(), []policy.Claim{conns("r", "k", 1)}); !errors.Is(err, ErrClosed) {
				t.Fatalf("Admit after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// TestFailMode: every on_error value policy.RedisConfig.Validate accepts
// maps to its FailMode and back; others are refused there.
func TestFailMode(t *testing.T) {
	for in, want := range map[string]FailMode{"": FailLocal, "local": FailLocal, "allow": FailAllow, "deny": FailDeny} {
		err := policy.RedisConfig{Addrs: []string{"x:1"}, OnError: in}.Validate()
		if got := failMode(in); err != nil || got != want {
			t.Errorf("failMode(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got := failMode(in); in != "" && got.String() != in {
			t.Errorf("String() = %q, want %q", got.String(), in)
		}
	}
	if err := (policy.RedisConfig{Addrs: []string{"x:1"}, OnError: "open"}).Validate(); err == nil {
		t.Error("on_error open: no error")
	}
}

func TestHashTag(t *testing.T) {
	for p, want := range map[string]bool{"wslimit:": false, "{wslimit}:": true, "{}:": false, "a{b}": true, "}{": false, "{x": false} {
		if got := hasHashTag(p); got != want {
			t.Errorf("hasHashTag(%q) = %v, want %v", p, got, want)
		}
	}
}

// TestBreaker walks the breaker through its states at fixed times.
func TestBreaker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := &breaker{threshold: 3, cooldown: time.Second}
	step := func(name string, got, want bool) {
		t.Helper()
		if got != want {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
	}
	step("allow closed", b.allow(t0), true)
	step("failure 1 opens", b.failure(t0), false)
	step("failure 2 opens", b.failure(t0), false)
	b.success() // resets the count
	step("failure 1 after success opens", b.failure(t0), false)
	step("failure 2 opens", b.failure(t0), false)
	step("failure 3 opens", b.failure(t0), true)
	step("allow during cooldown", b.allow(t0.Add(999*time.Millisecond)), false)
	step("allow after cooldown (probe)", b.allow(t0.Add(time.Second)), true)
	step("second caller while probing", b.allow(t0.Add(time.Second)), false)
	step("late failure while open", b.failure(t0.Add(time.Second)), true) // the probe failed
	step("allow after failed probe", b.allow(t0.Add(1500*time.Millisecond)), false)
	step("probe after second cooldown", b.allow(t0.Add(2*time.Second)), true)
	b.abandon(t0.Add(2 * time.Second))
	step("next caller probes after abandon", b.allow(t0.Add(2*time.Second)), true)
	step("probe success recovers", b.success(), true)
	step("closed again", b.isOpen(), false)
	step("allow closed", b.allow(t0.Add(2*time.Second)), true)
}

// TestLiveCounting covers Stats and the lease map across admissions.
func TestLiveCounting(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	s := newStore(t, c, Options{OnError: FailAllow, Prefix: uniquePrefix(t)})
	ctx := context.Background()
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			claims := []policy.Claim{conns("r", "k", 1000)}
			for range 20 {
				l, v, err := s.Admit(ctx, time.Now(), claims)
				if err != nil || !v.OK {
					t.Errorf("Admit = %+v, %v", v, err)
					return
				}
				n.Add(1)
				s.Release(ctx, l, claims)
			}
		})
	}
	wg.Wait()
	if st := s.Snapshot(); st.Live != 0 || st.Pending != 0 || st.Errors != 0 {
		t.Fatalf("stats = %+v, want nothing live, pending or failed", st)
	}
}

// TestNewWarmsPool guards the cause of a CI failure: the first burst of
// admissions after New each dialled and set up a connection (TCP, HELLO,
// CLIENT SETINFO) within its own timeout, and on a loaded machine some
// timed out against a healthy Redis. New now sets those connections up
// first, so a burst as large as the warm-up dials nothing.
func TestNewWarmsPool(t *testing.T) {
	c, h := newClient(t, sharedAddr(t))
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t)})
	n := min(c.Options().PoolSize, warmConns)
	if d := h.dials.Load(); d < int64(n) {
		t.Fatalf("New dialled %d connections, want at least %d", d, n)
	}
	dialled := h.dials.Load()
	claims := []policy.Claim{conns("r", "burst", 1000)}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			if _, v, err := s.Admit(context.Background(), time.Now(), claims); err != nil || !v.OK {
				t.Errorf("Admit = %+v, %v", v, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if d := h.dials.Load() - dialled; d != 0 {
		t.Fatalf("a burst of %d admissions dialled %d connections, want none", n, d)
	}
}
