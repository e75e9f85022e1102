package redisstore

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// admitCap admits claims until refused and returns how many were admitted,
// failing if any decision did not come from Redis.
func admitCap(t *testing.T, s *Store, claims []policy.Claim) int {
	t.Helper()
	n := 0
	for range 100 {
		_, v, err := s.Admit(context.Background(), time.Now(), claims)
		if err != nil {
			t.Fatal(err)
		}
		if st := s.Snapshot(); st.Degraded != 0 {
			t.Fatalf("decided without Redis: %+v", st)
		}
		if !v.OK {
			return n
		}
		n++
	}
	return n
}

// TestSentinel: with master_name the store finds the master through a
// Sentinel.
func TestSentinel(t *testing.T) {
	master := ownServer(t, "")
	sentinel, err := launchWith(0, "", "sentinel monitor mymaster 127.0.0.1 "+strconv.Itoa(master.port)+" 1\n")
	if err != nil {
		t.Fatalf("starting sentinel: %v", err)
	}
	t.Cleanup(sentinel.shutdown)
	cfg := policy.RedisConfig{
		Addrs: []string{sentinel.addr}, MasterName: "mymaster",
		Prefix: uniquePrefix(t), OnError: "deny", Timeout: time.Second,
	}
	s, err := FromConfig(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatalf("FromConfig: %v", err)
	}
	defer s.Close()
	claims := []policy.Claim{conns("a", "k", 3), conns("b", "k", 2)}
	if n := admitCap(t, s, claims); n != 2 {
		t.Fatalf("admitted %d, want 2", n)
	}
	// The slots are on the master.
	direct, _ := newClient(t, master.addr)
	ck, _ := s.keys(&claims[0])
	if got := zcard(t, direct, ck); got != 2 {
		t.Fatalf("ZCARD on the master = %d, want 2", got)
	}
}

// TestCluster: on Redis Cluster a prefix with a hash tag keeps multi-rule
// admission in one slot; without one New refuses, rather than fail every
// multi-rule handshake with CROSSSLOT.
func TestCluster(t *testing.T) {
	node := clusterNode(t)
	direct, _ := newClient(t, node.addr)
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{node.addr}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { cc.Close() })

	if _, err := New(ctx, cc, Options{OnError: FailDeny}); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Fatalf("New without a hash tag: %v, want an error about the hash tag", err)
	}
	// What the hash tag prevents: keys of two rules in different slots.
	if err := direct.Eval(ctx, "return 1", []string{"wslimit:a:{k}:c", "wslimit:b:{j}:c"}).Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("multi-slot script: %v, want CROSSSLOT", err)
	}

	s, err := New(ctx, cc, Options{OnError: FailDeny, Prefix: "{" + uniquePrefix(t) + "}:", Timeout: time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	claims := []policy.Claim{conns("a", "k1", 5), conns("b", "k2", 3), bucket("c", "k3", 1, 10)}
	if n := admitCap(t, s, claims); n != 3 {
		t.Fatalf("admitted %d, want 3", n)
	}
}

// clusterNode starts a single-node Redis Cluster holding every slot.
func clusterNode(t *testing.T) *redisServer {
	t.Helper()
	node := ownServer(t, "", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	direct, _ := newClient(t, node.addr)
	ctx := context.Background()
	if err := direct.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(direct.ClusterInfo(ctx).Val(), "cluster_state:ok") {
		if time.Now().After(deadline) {
			t.Fatal("single-node cluster never became ok")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return node
}
