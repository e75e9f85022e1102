package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMultiProcessBans: two demo processes on one Redis. A reconnect loop
// banned by instance 0 is refused by instance 1 (which never saw it
// offend), listed by instance 1's /bans/, and lifted on both by an unban
// sent to instance 1's admin listener; a ban set by hand on instance 0
// applies on instance 1 with its remaining time.
func TestMultiProcessBans(t *testing.T) {
	dir := t.TempDir()
	redisAddr := mpRedisAddr(t, dir)
	bin := buildDemo(t, dir)
	policyFile := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf(`version: 1
rules:
  - {name: per-ip, key: ip, connections: 100}
penalties:
  - name: loop
    key: ip
    offences: {short_lived: 30s}
    threshold: 3
    ban: 5m
state:
  store: redis
  redis: {addrs: [%q], prefix: %q, timeout: 2s, on_error: deny}
reject: {mode: status}
`, redisAddr, "wslimit-test:bans:"+randomHex(t)+":")
	if err := os.WriteFile(policyFile, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	admins := []string{freeAddr(t), freeAddr(t)}
	procs := []*demoProc{
		startDemoWith(t, nil, bin, 0, "-policy", policyFile, "-admin", admins[0]),
		startDemoWith(t, nil, bin, 1, "-policy", policyFile, "-admin", admins[1]),
	}
	for range 3 {
		c, err := procs[0].dial()
		if err != nil {
			t.Fatalf("loop handshake: %v", err)
		}
		c.Close()
	}
	r := waitBanned(t, procs[1], "instance 0's ban on instance 1")
	if n, err := strconv.Atoi(r.retryAfter); err != nil || n < 1 || n > 300 {
		t.Fatalf("Retry-After %q, want at most the 300s ban", r.retryAfter)
	}
	var bans []struct {
		Penalty, Key, Reason string
		Remaining            int64 `json:"remaining_seconds"`
	}
	getJSON(t, "http://"+admins[1]+"/bans/", &bans)
	if len(bans) != 1 || bans[0].Penalty != "loop" || bans[0].Key != "127.0.0.1" || bans[0].Reason != "short_lived" || bans[0].Remaining > 300 {
		t.Fatalf("instance 1 /bans/: %+v", bans)
	}
	post(t, "http://"+admins[1]+"/bans/unban", `{"penalty":"loop","key":"127.0.0.1"}`)
	waitAdmitted(t, procs[0], "the unban sent to instance 1, on instance 0")
	post(t, "http://"+admins[0]+"/bans/ban", `{"penalty":"loop","key":"127.0.0.1","duration":"10m"}`)
	r = waitBanned(t, procs[1], "a ban by hand on instance 0, on instance 1")
	// A lower bound with slack: a loaded machine takes seconds, not minutes.
	if n, err := strconv.Atoi(r.retryAfter); err != nil || n < 540 || n > 600 {
		t.Fatalf("Retry-After %q after a 10m ban, want at most 600 and not minutes less", r.retryAfter)
	}
}

func waitBanned(t *testing.T, p *demoProc, what string) *rejection {
	t.Helper()
	deadline := time.Now().Add(slack)
	for {
		c, err := p.dial()
		var r *rejection
		if errors.As(err, &r) && r.status == http.StatusTooManyRequests && strings.Contains(r.body, `"banned"`) {
			return r
		}
		if c != nil {
			time.Sleep(time.Second) // not short-lived: no offence of its own
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not refused as banned after %v (last: %v)", what, slack, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitAdmitted(t *testing.T, p *demoProc, what string) {
	t.Helper()
	deadline := time.Now().Add(slack)
	for {
		c, err := p.dial()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still refused after %v: %v", what, slack, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
}

func post(t *testing.T, url, body string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s %s: %d", url, body, resp.StatusCode)
	}
}
