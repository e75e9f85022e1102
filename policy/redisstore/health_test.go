package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// delayHook delays the admission scripts (EVALSHA) by delay before they
// reach Redis, as a host too loaded to run the call in time would; PING and
// pipelines are not delayed.
type delayHook struct{ delay atomic.Int64 }

func (h *delayHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *delayHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if d := time.Duration(h.delay.Load()); d > 0 && cmd.Name() == "evalsha" {
			time.Sleep(d)
		}
		return next(ctx, cmd)
	}
}
func (h *delayHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestLoadedHostKeepsBreakerClosed: admissions that time out because this
// host was slow, not Redis, do not open the breaker: a PING with a longer
// budget finds Redis answering, so the timeouts are not counted against
// it; admissions go back to Redis as soon as the host keeps up.
func TestLoadedHostKeepsBreakerClosed(t *testing.T) {
	t.Parallel()
	c, _ := newClient(t, sharedAddr(t))
	hook := &delayHook{}
	c.AddHook(hook)
	const budget = 200 * time.Millisecond
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), Timeout: budget, BreakerFailures: 3})
	claims := []policy.Claim{conns("r", "k", 1000)}
	hook.delay.Store(int64(2 * budget)) // every admission misses its budget
	for range 5 {
		if _, v, err := s.Admit(context.Background(), time.Now(), claims); err != nil || v.OK {
			t.Fatalf("stalled admission = %+v, %v; want refused by on_error deny", v, err)
		}
	}
	hook.delay.Store(0)
	// Bound: the confirming PINGs have their budget (s.confirm) to answer;
	// past it, a failed one would have opened the breaker.
	deadline := time.Now().Add(s.confirm + slack)
	for s.confirming.Load() || time.Now().Before(deadline) {
		if s.Snapshot().BreakerOpen {
			t.Fatalf("breaker opened on a healthy Redis: %+v", s.Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
	degraded := s.Snapshot().Degraded
	if _, v, err := s.Admit(context.Background(), time.Now(), claims); err != nil || !v.OK || s.Snapshot().Degraded != degraded {
		t.Fatalf("after the stall: %+v, %v (stats %+v); want admitted by Redis", v, err, s.Snapshot())
	}
	if h := s.Health(); h.Errors["timeout"] < 5 || h.BreakerOpen {
		t.Fatalf("health %+v: want 5 timeouts counted and the breaker closed", h)
	}
}

// TestPoolQueueIsNotARedisFailure: more concurrent admissions than pooled
// connections wait for a connection outside their Redis budget; those that
// wait too long are an overload (on_error decides) and never open the
// breaker, while Redis answers every call it gets within its budget.
func TestPoolQueueIsNotARedisFailure(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{Addr: sharedAddr(t), ContextTimeoutEnabled: true, PoolSize: 2})
	t.Cleanup(func() { c.Close() })
	hook := &delayHook{}
	c.AddHook(hook)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), Timeout: 500 * time.Millisecond})
	hook.delay.Store(int64(20 * time.Millisecond)) // each call holds its connection 20 ms
	claims := []policy.Claim{conns("r", "k", 1000)}
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for range 100 { // 100 × 20 ms on 2 connections: 1 s of queue
		wg.Go(func() {
			if _, v, err := s.Admit(context.Background(), time.Now(), claims); err == nil && v.OK {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	h := s.Health()
	t.Logf("100 admissions on 2 connections: %d admitted, %d overloaded, %d timeouts", admitted.Load(), h.Errors["overload"], h.Errors["timeout"])
	if h.BreakerOpen || h.Errors["overload"] == 0 || admitted.Load() == 0 {
		t.Fatalf("health %+v, %d admitted: want some admitted, some overloaded, the breaker closed", h, admitted.Load())
	}
}

// TestClusterNodeAsOneAddress: one address of a Cluster node is recognised
// at start. New with a plain client refuses with an error naming the fix;
// FromConfig uses the cluster client when the prefix has a hash tag, and
// refuses without one.
func TestClusterNodeAsOneAddress(t *testing.T) {
	node := clusterNode(t)
	ctx := context.Background()
	plain, _ := newClient(t, node.addr)
	_, err := New(ctx, plain, Options{OnError: FailDeny, Prefix: "{" + uniquePrefix(t) + "}:"})
	if !errors.Is(err, errClusterNode) || !strings.Contains(err.Error(), "state.redis.addrs") || !strings.HasPrefix(err.Error(), "redisstore: ") {
		t.Fatalf("New on a plain client to a Cluster node: %v; want an error naming the fix", err)
	}
	cfg := policy.RedisConfig{Addrs: []string{node.addr}, OnError: "deny", Timeout: time.Second, Prefix: "{" + uniquePrefix(t) + "}:"}
	s, err := FromConfig(ctx, cfg, nil, nil)
	if err != nil {
		t.Fatalf("FromConfig with one Cluster address and a hash tag: %v", err)
	}
	defer s.Close()
	if _, ok := s.client.(*redis.ClusterClient); !ok {
		t.Fatalf("FromConfig built a %T, want the cluster client", s.client)
	}
	if n := admitCap(t, s, []policy.Claim{conns("a", "k", 2), conns("b", "j", 5)}); n != 2 {
		t.Fatalf("admitted %d, want 2", n)
	}
	cfg.Prefix = "plain:"
	if s, err := FromConfig(ctx, cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "hash tag") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("FromConfig with one Cluster address, no hash tag: %v; want an error about the hash tag", err)
	}
}
