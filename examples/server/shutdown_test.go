package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

// TestSIGTERMFreesSlotsAtOnce runs two demo processes sharing a global cap
// of 40 in Redis, with a lease TTL of 30 s so that expiry cannot explain
// anything below. Instance 0 holds 32 connections and instance 1 the other
// 8. On SIGTERM instance 0 stops admitting, releases its 32 leases in one
// round trip and closes its WebSockets with 1001 Going Away: within 1 s of
// the signal Redis holds only instance 1's 8 leases, and instance 1 then
// admits 32 new handshakes (and refuses the next).
func TestSIGTERMFreesSlotsAtOnce(t *testing.T) {
	const capN, held = 40, 32
	dir := t.TempDir()
	redisAddr := mpRedisAddr(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		mpNoRedis(t, fmt.Sprintf("redis at %s does not answer: %v", redisAddr, err))
	}
	bin := buildDemo(t, dir)
	prefix := "wslimit-test:term:" + randomHex(t) + ":"
	policyFile := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf(`version: 1
rules:
  - {name: everyone, key: global, connections: %d}
state:
  store: redis
  redis: {addrs: [%q], prefix: %q, lease_ttl: 30s, refresh_interval: 10s, timeout: 1s, on_error: deny}
`, capN, redisAddr, prefix)
	if err := os.WriteFile(policyFile, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	leaseKey := prefix + "everyone:{global}:l"
	inst := []*demoProc{startDemo(t, bin, policyFile, 0), startDemo(t, bin, policyFile, 1)}
	var conns [2][]*websocket.Conn
	defer func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
	}()
	for i := range capN {
		k := 0
		if i >= held {
			k = 1
		}
		c, err := inst[k].dial()
		if err != nil {
			t.Fatalf("handshake %d on instance %d: %v", i, k, err)
		}
		conns[k] = append(conns[k], c)
	}
	expectRefused(t, inst[1], "everyone", "with the cap full")

	_ = inst[0].cmd.Process.Signal(syscall.SIGTERM)
	termAt := time.Now()
	// Bound: the release is one round trip after the signal; 1 s is the
	// requirement, with the loaded machine's scheduling inside it.
	for {
		n := leaseState(ctx, t, rdb, leaseKey).n
		if n == capN-held {
			break
		}
		if time.Since(termAt) > time.Second {
			t.Fatalf("%v after SIGTERM Redis still holds %d leases, want %d", time.Since(termAt), n, capN-held)
		}
		time.Sleep(5 * time.Millisecond)
	}
	freed := time.Since(termAt)
	for i := range held {
		c, err := inst[1].dial()
		if err != nil {
			t.Fatalf("handshake %d on instance 1 after the SIGTERM: %v (want the freed capacity)", i, err)
		}
		conns[1] = append(conns[1], c)
	}
	expectRefused(t, inst[1], "everyone", "with the cap full again")
	t.Logf("SIGTERM of an instance holding %d slots: Redis freed them %v after the signal; %d handshakes admitted on the other %v after it",
		held, freed.Round(time.Millisecond), held, time.Since(termAt).Round(time.Millisecond))

	// The terminated instance's clients were told to go away.
	for i, c := range conns[0] {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("connection %d of the terminated instance ended with %v, want close 1001", i, err)
		}
	}
	select {
	case <-inst[0].done:
		if inst[0].err != nil {
			t.Fatalf("instance 0 exited with %v after SIGTERM:\n%s", inst[0].err, tail(inst[0].out.String(), 4000))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("instance 0 did not exit within 10 s of SIGTERM")
	}
}
