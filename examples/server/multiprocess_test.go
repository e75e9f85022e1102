package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

// TestMultiProcessRedis runs three demo server processes that share one
// Redis (issue 4, must-show 2):
//
//   - a global cap of 6 holds across the three processes: six handshakes
//     dealt round-robin are admitted, and every further one, on any
//     instance, gets 429 — also once the connections have outlived the
//     lease TTL, so the leases are really being refreshed;
//   - one instance is killed with SIGKILL, so nothing can release or
//     refresh its two slots; within lease TTL + one refresh interval (plus
//     a margin of seconds for a loaded machine) the survivors admit two new
//     handshakes, and then refuse again: the cap is back to exactly 6,
//     never more;
//   - a monitor polls the lease set in Redis every 20ms and fails the test
//     if it ever holds more than 6 members or more than 6 unexpired ones;
//   - closing the clients releases every slot at once (across processes),
//     before any lease could have expired, and the survivors shut down
//     cleanly on SIGTERM.
//
// The test runs on loaded CI machines (every package's tests at once,
// -race, 2 cores), so no verdict may hang on a stall shorter than seconds.
// The lease TTL is 5 s with a refresh every 500ms, each call to Redis with
// a timeout of 2 s: a live connection's lease expires only if its owner (or
// Redis) stalls for about 4.5 s. The bounds below say what they bound.
//
// Redis is found as in policy/redisstore: WSLIMIT_REDIS_ADDR, else a
// redis-server from PATH started on a free loopback port for this test,
// else the test skips loudly (fails when WSLIMIT_REQUIRE_REDIS=1). It is
// not skipped under -short: it takes a few seconds, and CI relies on it.
// When the test binary is built with -race, so is the demo binary.
func TestMultiProcessRedis(t *testing.T) {
	const (
		capN     = 6
		leaseTTL = 5 * time.Second
		interval = 500 * time.Millisecond
		timeout  = 2 * time.Second  // of one store call: on_error deny turns a timeout into a 503
		margin   = 10 * time.Second // how late, beyond lease TTL + interval, the dead slots may come back
		rule     = "everyone"
	)
	began := time.Now()
	dir := t.TempDir()
	redisAddr := mpRedisAddr(t, dir)

	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), slack)
	err := rdb.Ping(pctx).Err()
	pcancel()
	if err != nil {
		mpNoRedis(t, fmt.Sprintf("redis at %s does not answer: %v", redisAddr, err))
	}

	bin := buildDemo(t, dir)
	built := time.Now()
	// Bounds the Redis reads of the test; the build (minutes under -race
	// on a loaded machine) is behind it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// on_error: deny, so that a slow Redis can only refuse (503, which the
	// test reports as such), never admit past the shared cap the way the
	// local fallback would; the timeout of seconds keeps a loaded machine
	// from tripping it.
	prefix := "wslimit-test:mp:" + randomHex(t) + ":"
	policyFile := filepath.Join(dir, "policy.yaml")
	pol := fmt.Sprintf(`version: 1
rules:
  - name: %s
    key: global
    connections: %d
state:
  store: redis
  redis:
    addrs: [%q]
    prefix: %q
    lease_ttl: %s
    refresh_interval: %s
    timeout: %s
    on_error: deny
reject:
  mode: status
`, rule, capN, redisAddr, prefix, leaseTTL, interval, timeout)
	if err := os.WriteFile(policyFile, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	// The documented key layout: <prefix><rule>:{<key>}:l holds the leases.
	leaseKey := prefix + rule + ":{global}:l"

	var inst [3]*demoProc
	for i := range inst {
		inst[i] = startDemo(t, bin, policyFile, i)
	}
	started := time.Now()

	var conns [3][]*websocket.Conn // by instance
	defer func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
	}()

	// 1. Six handshakes round-robin: two per instance, all admitted.
	for i := 0; i < capN; i++ {
		k := i % 3
		c, err := inst[k].dial()
		if err != nil {
			t.Fatalf("handshake %d on instance %d: %v (want admitted)", i+1, k, err)
		}
		conns[k] = append(conns[k], c)
		echo(t, c, fmt.Sprintf("hello %d", i))
	}
	admittedAt := time.Now()
	if st := leaseState(ctx, t, rdb, leaseKey); st.n != capN || st.live != capN {
		t.Fatalf("after %d admissions Redis key %s holds %d leases (%d unexpired), want %d", capN, leaseKey, st.n, st.live, capN)
	}
	mon := startMonitor(rdb, leaseKey, capN)
	defer mon.stop(t)

	// 2. The cap is full: every instance refuses until the leases have
	// outlived their TTL, so they live on only because their owners
	// refresh them. Unrefreshed, every lease would have expired by
	// admittedAt + leaseTTL (its score is Redis's clock at its admission,
	// which came before the handshake completed, plus the TTL): a round of
	// refusals that starts after that (and a little clock slack) proves the
	// refreshes. A lower bound: a slow machine only adds rounds.
	holdUntil := admittedAt.Add(leaseTTL + 250*time.Millisecond)
	refusals := 0
	for round := 0; ; round++ {
		roundStart := time.Now()
		for k := range inst {
			expectRefused(t, inst[k], rule, fmt.Sprintf("while full (round %d)", round))
			refusals++
		}
		if roundStart.After(holdUntil) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for k, cs := range conns {
		for i, c := range cs {
			echo(t, c, fmt.Sprintf("still alive %d/%d", k, i))
		}
	}
	t.Logf("cap %d full across 3 processes: %d refusals (429) over %v (lease TTL %v), all %d connections still open",
		capN, refusals, time.Since(admittedAt).Round(time.Millisecond), leaseTTL, capN)

	// 3. SIGKILL instance 0, which holds two slots: they are not released,
	// and nobody refreshes them any more.
	victim := inst[0]
	victim.kill()
	killedAt := time.Now()
	held := len(conns[0])
	survivors := []*demoProc{inst[1], inst[2]}

	// Right after the kill the slots are still leased: their last refresh
	// was at most an interval before the kill (a stall of seconds aside),
	// so they expire no sooner than about leaseTTL - interval from now.
	expectRefused(t, survivors[0], rule, "right after the kill")

	// An upper bound with seconds of slack: the dead leases expire by
	// killedAt + leaseTTL (their last refresh was before the kill), and the
	// next probe after that is admitted; the margin covers probes slowed by
	// a loaded machine. Probing stops as soon as both slots are back.
	bound := leaseTTL + interval + margin
	deadline := killedAt.Add(bound)
	var readmitted []time.Duration
	probes := 0
	for len(readmitted) < held {
		k := 1 + probes%2
		c, err := inst[k].dial()
		probes++
		now := time.Now()
		switch {
		case err == nil:
			conns[k] = append(conns[k], c)
			readmitted = append(readmitted, now.Sub(killedAt).Round(time.Millisecond))
			echo(t, c, "readmitted")
			if open := len(conns[1]) + len(conns[2]); open > capN {
				t.Fatalf("%d connections open on the survivors, cap %d", open, capN)
			}
		case !isStatus(err, http.StatusTooManyRequests):
			t.Fatalf("probe %d on instance %d after the kill: %v (want admitted or 429)", probes, k, err)
		}
		if len(readmitted) < held && now.After(deadline) {
			t.Fatalf("only %d of the killed instance's %d slots came back within %v (lease TTL %v + refresh %v + margin %v)",
				len(readmitted), held, now.Sub(killedAt), leaseTTL, interval, margin)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last := readmitted[held-1]; last > bound {
		t.Fatalf("the killed instance's slots came back only after %v (lease TTL %v + refresh %v + margin %v)",
			last, leaseTTL, interval, margin)
	}
	t.Logf("SIGKILL of instance 0 (holding %d slots): slots readmitted on the survivors after %v (bound %v), %d probes",
		held, readmitted, bound, probes)

	// Full again: exactly 6, never more.
	for _, p := range survivors {
		expectRefused(t, p, rule, "after the slots came back")
	}
	for k := 1; k < 3; k++ {
		for i, c := range conns[k] {
			echo(t, c, fmt.Sprintf("survivor %d/%d", k, i))
		}
	}

	// 4. The Redis view over the whole run.
	samples := mon.stop(t)
	expiredAt := "not seen between two samples (20ms apart)"
	for _, s := range samples {
		if s.at.After(killedAt) && s.live <= capN-held {
			expiredAt = "seen expired " + s.at.Sub(killedAt).Round(time.Millisecond).String() + " after the kill"
			break
		}
	}
	maxN, maxLive := 0, 0
	for _, s := range samples {
		maxN, maxLive = max(maxN, s.n), max(maxLive, s.live)
	}
	t.Logf("Redis monitor: %d samples, at most %d leases (%d unexpired) at any time; the killed instance's leases %s",
		len(samples), maxN, maxLive, expiredAt)

	// 5. Closing the clients releases every slot now, not at expiry. The
	// bound is Redis's own clock, not a deadline of this process: the lease
	// set must be empty while its earliest lease (read before the close)
	// had not yet expired. A member leaves the set before its score only
	// by a release, and that score is about leaseTTL - interval (4.5 s)
	// after the close: only releases, or this test's polls, stalled that
	// long could look late.
	before := leaseState(ctx, t, rdb, leaseKey)
	if before.n != capN || before.minExp < 0 {
		t.Fatalf("before closing the clients Redis holds %d leases (%d unexpired), want %d", before.n, before.live, capN)
	}
	for k, cs := range conns {
		for _, c := range cs {
			c.Close()
		}
		conns[k] = nil
	}
	closedAt := time.Now()
	for {
		st := leaseState(ctx, t, rdb, leaseKey)
		if st.n == 0 && st.live == 0 {
			if st.now >= before.minExp {
				t.Fatalf("Redis held leases until %dms past the earliest one's expiry: the slots came back by expiry, not by the clients' close",
					st.now-before.minExp)
			}
			t.Logf("all slots released %v after the clients closed, %dms before the earliest lease would have expired",
				time.Since(closedAt).Round(time.Millisecond), before.minExp-st.now)
			break
		}
		if time.Since(closedAt) > slack {
			t.Fatalf("%v after closing every client Redis still holds %d leases (%d unexpired)", time.Since(closedAt), st.n, st.live)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// 6. The survivors stop cleanly on SIGTERM.
	for _, p := range survivors {
		p.terminate(t)
	}
	for _, p := range inst {
		if out := p.out.String(); strings.Contains(out, "DATA RACE") {
			t.Errorf("instance %d reported a data race:\n%s", p.idx, tail(out, 8000))
		}
	}
	t.Logf("timing: build %v, start %v, whole test %v",
		built.Sub(began).Round(time.Millisecond), started.Sub(built).Round(time.Millisecond),
		time.Since(began).Round(time.Millisecond))
}

// demoProc is one demo server process.
type demoProc struct {
	idx  int
	addr string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done is closed
}

// startDemo starts the demo binary on a free loopback port and waits until
// it serves its page; it is killed at the end of the test. A port taken
// between choosing and binding it costs a retry.
func startDemo(t *testing.T, bin, policyFile string, idx int) *demoProc {
	t.Helper()
	return startDemoWith(t, nil, bin, idx, "-policy", policyFile)
}

// startDemoWith is startDemo with the command run through wrap (e.g.
// prlimit and its arguments; nil for none) and the given flags.
func startDemoWith(t *testing.T, wrap []string, bin string, idx int, flags ...string) *demoProc {
	t.Helper()
	var last string
	for attempt := 0; attempt < 5; attempt++ {
		p := &demoProc{idx: idx, addr: freeAddr(t), out: &syncBuffer{}, done: make(chan struct{})}
		argv := append(append(append([]string{}, wrap...), bin, "-addr", p.addr), flags...)
		p.cmd = exec.Command(argv[0], argv[1:]...)
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("starting instance %d: %v", idx, err)
		}
		go func() {
			p.err = p.cmd.Wait()
			close(p.done)
		}()
		t.Cleanup(func() {
			p.kill()
			if t.Failed() {
				t.Logf("instance %d (%s) output:\n%s", idx, p.addr, tail(p.out.String(), 4000))
			}
		})
		err := p.waitReady(time.Minute) // a -race binary starting on a loaded machine
		if err == nil {
			return p
		}
		last = err.Error()
		p.kill()
		if !strings.Contains(p.out.String(), "address already in use") {
			break
		}
	}
	t.Fatalf("instance %d did not come up: %s", idx, last)
	return nil
}

// waitReady polls GET / until the demo page is served.
func (p *demoProc) waitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited (%v):\n%s", p.err, tail(p.out.String(), 4000))
		default:
		}
		resp, err := client.Get("http://" + p.addr + "/")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte("wslimit demo")) {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no demo page on %s after %v:\n%s", p.addr, timeout, tail(p.out.String(), 4000))
}

// kill ends the process with SIGKILL, as a crash would, and reaps it.
func (p *demoProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(slack):
	}
}

// terminate asks the process to stop (SIGTERM) and expects a clean exit.
func (p *demoProc) terminate(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("instance %d exited with %v after SIGTERM", p.idx, p.err)
		}
	case <-time.After(slack):
		t.Errorf("instance %d did not exit within %v of SIGTERM", p.idx, slack)
		p.kill()
	}
}

// rejection is a refused handshake.
type rejection struct {
	status     int
	retryAfter string
	body       string
}

func (r *rejection) Error() string {
	return fmt.Sprintf("refused: %d, Retry-After %q, body %s", r.status, r.retryAfter, strings.TrimSpace(r.body))
}

func isStatus(err error, status int) bool {
	var r *rejection
	return errors.As(err, &r) && r.status == status
}

// dial opens a WebSocket to the instance's /ws; a refused handshake comes
// back as a *rejection.
func (p *demoProc) dial() (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: slack}
	c, resp, err := d.Dial("ws://"+p.addr+"/ws", nil)
	if err == nil {
		return c, nil
	}
	if resp != nil && errors.Is(err, websocket.ErrBadHandshake) {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, &rejection{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: string(body)}
	}
	return nil, err
}

// expectRefused dials the instance and wants a 429 naming the rule.
func expectRefused(t *testing.T, p *demoProc, rule, when string) {
	t.Helper()
	c, err := p.dial()
	if err == nil {
		c.Close()
		t.Fatalf("instance %d admitted a handshake %s: the shared cap was exceeded", p.idx, when)
	}
	var r *rejection
	if !errors.As(err, &r) {
		t.Fatalf("instance %d %s: %v (want 429)", p.idx, when, err)
	}
	var body struct {
		Rule   string `json:"rule"`
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal([]byte(r.body), &body)
	if r.status != http.StatusTooManyRequests || r.retryAfter == "" || body.Rule != rule || body.Reason != "connections" {
		t.Fatalf("instance %d %s: %v; want 429 with Retry-After, rule %q, reason connections", p.idx, when, r, rule)
	}
}

// echo checks that the connection is a live WebSocket.
func echo(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(slack))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("echo %q: write: %v", msg, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(slack))
	_, got, err := c.ReadMessage()
	if err != nil || string(got) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

// leaseScript reads a lease set (KEYS[1]) and its instance hash (KEYS[2])
// atomically: its members, those whose instance still vouches for them
// (an entry in the hash above the Redis clock, as the store's scripts read
// it; every member of a set without a hash, whose single owner vouches by
// the set's expiry), the Redis clock in milliseconds and the earliest
// time an instance with members vouches until (-1 for an empty set).
var leaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local card = redis.call('ZCARD', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  local min = -1
  if card > 0 then min = now + redis.call('PTTL', KEYS[1]) end
  return {card, card, now, min}
end
local live, min = 0, -1
local h = redis.call('HGETALL', KEYS[2])
for j = 1, #h, 2 do
  local n = redis.call('ZLEXCOUNT', KEYS[1], '[' .. h[j] .. ':', '(' .. h[j] .. ';')
  local exp = tonumber(h[j+1])
  if n > 0 and exp > now then live = live + n end
  if n > 0 and (min < 0 or exp < min) then min = exp end
end
return {card, live, now, min}
`)

// leases is what leaseScript read.
type leases struct {
	n, live     int
	now, minExp int64 // Redis clock and lowest score, in ms
}

func countLeases(ctx context.Context, rdb *redis.Client, key string) (leases, error) {
	ctx, cancel := context.WithTimeout(ctx, slack) // a loaded machine, not a slow Redis, is the usual delay
	defer cancel()
	v, err := leaseScript.Run(ctx, rdb, []string{key, key[:len(key)-1] + "i"}).Int64Slice()
	if err != nil {
		return leases{}, err
	}
	if len(v) != 4 {
		return leases{}, fmt.Errorf("lease count: unexpected reply %v", v)
	}
	return leases{n: int(v[0]), live: int(v[1]), now: v[2], minExp: v[3]}, nil
}

func leaseState(ctx context.Context, t *testing.T, rdb *redis.Client, key string) leases {
	t.Helper()
	st, err := countLeases(ctx, rdb, key)
	if err != nil {
		t.Fatalf("reading %s from Redis: %v", key, err)
	}
	return st
}

// monitor polls the lease set and records every change of its counts.
type monitor struct {
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
	capN    int
	samples []sample // owned by the goroutine until done is closed
	errs    []string
}

type sample struct {
	at      time.Time
	n, live int
}

func startMonitor(rdb *redis.Client, key string, capN int) *monitor {
	m := &monitor{quit: make(chan struct{}), done: make(chan struct{}), capN: capN}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		failures := 0
		for {
			st, err := countLeases(context.Background(), rdb, key)
			n, live := st.n, st.live
			switch {
			case err != nil:
				if failures++; failures <= 3 {
					m.errs = append(m.errs, "monitor: "+err.Error())
				}
			default:
				if len(m.samples) == 0 || m.samples[len(m.samples)-1].n != n || m.samples[len(m.samples)-1].live != live {
					m.samples = append(m.samples, sample{at: time.Now(), n: n, live: live})
				}
				if n > capN || live > capN {
					m.errs = append(m.errs, fmt.Sprintf("Redis held %d leases (%d unexpired), cap %d", n, live, capN))
				}
			}
			select {
			case <-m.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// stop ends the monitor (once), reports what it saw, and returns the
// samples.
func (m *monitor) stop(t *testing.T) []sample {
	t.Helper()
	m.once.Do(func() {
		close(m.quit)
		<-m.done
		for _, e := range m.errs {
			t.Error(e)
		}
	})
	<-m.done
	return m.samples
}

// buildDemo builds this directory's demo server into dir, with -race when
// the test binary has it.
func buildDemo(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the demo server: %v", err)
	}
	bin := filepath.Join(dir, "server")
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// mpRedisAddr returns WSLIMIT_REDIS_ADDR, or the address of a redis-server
// from PATH started for this test on a free port, as in policy/redisstore.
func mpRedisAddr(t *testing.T, dir string) string {
	t.Helper()
	if a := os.Getenv("WSLIMIT_REDIS_ADDR"); a != "" {
		return a
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		mpNoRedis(t, "no redis-server on PATH and WSLIMIT_REDIS_ADDR unset")
	}
	var out syncBuffer
	for attempt := 0; attempt < 5; attempt++ {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		deadline := time.Now().Add(slack) // start-up on a loaded machine
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{} // exited: try another port
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				t.Cleanup(stop)
				return addr
			}
			time.Sleep(10 * time.Millisecond)
		}
		stop()
	}
	t.Fatalf("redis-server did not come up:\n%s", tail(out.String(), 4000))
	return ""
}

// mpNoRedis skips (or, when Redis is required, fails) for lack of Redis.
func mpNoRedis(t *testing.T, why string) {
	t.Helper()
	const hint = "*** install redis-server or set WSLIMIT_REDIS_ADDR=host:port ***\n\n"
	if os.Getenv("WSLIMIT_REQUIRE_REDIS") == "1" {
		t.Fatal("\n\n*** REDIS REQUIRED (WSLIMIT_REQUIRE_REDIS=1) BUT UNAVAILABLE: " + why + " ***\n" + hint)
	}
	t.Skip("\n\n*** MULTI-PROCESS REDIS TEST SKIPPED: " + why + " ***\n" + hint +
		"*** (WSLIMIT_REQUIRE_REDIS=1 makes this a failure) ***\n\n")
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func randomHex(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// syncBuffer is a bytes.Buffer safe for a process's output goroutines and
// the test reading it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
