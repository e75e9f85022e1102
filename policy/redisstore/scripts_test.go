package redisstore

import (
	"context"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

// runAdmit calls the admission script directly with a member of its own,
// as Admit would, and returns the script's reply.
func runAdmit(t *testing.T, s *Store, member string, claims []policy.Claim) []int64 {
	t.Helper()
	keys, args := s.admitArgs(&lease{member: member}, claims)
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
		if res := runAdmit(t, s, "x:1", claims); len(res) != 1 || res[0] != 1 {
			t.Fatalf("try %d: reply %v, want {1}", try, res)
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
			if res := runAdmit(t, s, "x:2", tc.claims); len(res) != 4 || res[0] != tc.want[0] || res[1] != tc.want[1] || res[2] != tc.want[2] || res[3] != tc.want[3] {
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
