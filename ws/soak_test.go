//go:build unix

package ws

// Soak: 10,000 concurrent live WebSockets on loopback, both ends in this
// process, held for a bounded time with the caps exact, memory per
// connection reported, and every slot released at the end. Heavy, so it
// runs only when asked, and without -race (the race detector allows 8128
// goroutines; the server holds one per connection):
//
//	go test -run TestSoak -v -timeout 10m ./ws -wslimit.soak
//	WSLIMIT_SOAK=1 go test -run TestSoak -v -timeout 10m ./ws
//
// -wslimit.soakconns=N changes the number of connections (and the caps),
// -wslimit.soakhold=D how long they are held (default 5s).
//
// Descriptors: the test raises RLIMIT_NOFILE to the hard limit (and the
// hard limit too when the process may: CAP_SYS_RESOURCE). When that leaves
// room for both ends of every connection (2N + 5000), the clients run in
// this process and the memory figures are per pair of ends; otherwise, if
// there is room for one end (N + 5000), the clients run in a child process
// (this test binary again, TestSoakClientProcess) and the figures are the
// server's own per connection, with the client process's beside them; with
// less, the test skips loudly.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var (
	soakFlag  = flag.Bool("wslimit.soak", false, "run the 10,000-connection soak test; also WSLIMIT_SOAK=1")
	soakConns = flag.Int("wslimit.soakconns", 10_000, "connections of the soak test")
	soakHold  = flag.Duration("wslimit.soakhold", 5*time.Second, "how long the soak test holds its connections")
)

// raiseNoFile raises RLIMIT_NOFILE to want if the process may (the hard
// limit too), else to the hard limit, restores the limits when the test
// ends, and returns the soft limit in force.
func raiseNoFile(t *testing.T, want uint64) uint64 {
	t.Helper()
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Skipf("SKIPPED: getrlimit: %v", err)
	}
	lim := orig
	if lim.Max < want {
		try := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &try); err == nil {
			lim = try
		} else {
			t.Logf("cannot raise the hard RLIMIT_NOFILE from %d to %d: %v", lim.Max, want, err)
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("SKIPPED: setrlimit(%d): %v", lim.Cur, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
	t.Logf("RLIMIT_NOFILE %d (was soft %d, hard %d)", lim.Cur, orig.Cur, orig.Max)
	return lim.Cur
}

// rss returns the resident set size from /proc (0 where there is none).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(string(f[1]), 10, 64)
	return pages * int64(os.Getpagesize())
}

type memSnap struct {
	heap, stack, rss int64
	goroutines       int
}

func snap() memSnap {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnap{heap: int64(m.HeapInuse), stack: int64(m.StackInuse), rss: rss(), goroutines: runtime.NumGoroutine()}
}

// parallel runs f(i) for i in [0, n) on workers goroutines and returns the
// first error.
func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// soakClients hold the client ends of the soak's connections.
type soakClients interface {
	// open dials n connections to url, each echoing once.
	open(url string, n int) (time.Duration, error)
	// echo makes every connection echo once more.
	echo(round string) error
	// close closes every connection.
	close() error
}

// localClients are client ends in this process.
type localClients struct{ conns []*websocket.Conn }

func (lc *localClients) open(url string, n int) (time.Duration, error) {
	nd := &net.Dialer{Timeout: 30 * time.Second}
	d := &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 30 * time.Second}
	lc.conns = make([]*websocket.Conn, n)
	start := time.Now()
	err := parallel(n, 64, func(i int) error {
		c, resp, err := d.Dial(url, nil)
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			return fmt.Errorf("connection %d: %v (status %d)", i, err, status)
		}
		lc.conns[i] = c
		return nil
	})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	return took, lc.echo("first echo")
}

func (lc *localClients) echo(round string) error {
	return parallel(len(lc.conns), 64, func(i int) error {
		c := lc.conns[i]
		msg := []byte("soak-" + strconv.Itoa(i))
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			return fmt.Errorf("%s: connection %d: write: %v", round, i, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil || !bytes.Equal(got, msg) {
			return fmt.Errorf("%s: connection %d: echo %q, %v", round, i, got, err)
		}
		return nil
	})
}

func (lc *localClients) close() error {
	return parallel(len(lc.conns), 64, func(i int) error {
		if c := lc.conns[i]; c != nil {
			c.Close()
			lc.conns[i] = nil
		}
		return nil
	})
}

// childClients are client ends in a child process: this test binary
// running TestSoakClientProcess, driven by lines on its stdin and stdout.
type childClients struct {
	t       *testing.T
	cmd     *exec.Cmd
	in      io.WriteCloser
	lines   chan string
	figures string // the child's memory figures
}

func (cc *childClients) expect(prefix string, timeout time.Duration) (string, error) {
	select {
	case l, ok := <-cc.lines:
		if !ok {
			return "", fmt.Errorf("client process exited before %q", prefix)
		}
		if !strings.HasPrefix(l, prefix) {
			return "", fmt.Errorf("client process: %s", l)
		}
		return strings.TrimSpace(strings.TrimPrefix(l, prefix)), nil
	case <-time.After(timeout):
		return "", fmt.Errorf("client process: no %q within %v", prefix, timeout)
	}
}

func (cc *childClients) open(url string, n int) (time.Duration, error) {
	cc.cmd = exec.Command(os.Args[0], "-test.run=^TestSoakClientProcess$", "-test.timeout=10m")
	cc.cmd.Env = append(os.Environ(), "WSLIMIT_SOAK_CLIENT="+url, "WSLIMIT_SOAK_N="+strconv.Itoa(n))
	cc.cmd.Stderr = os.Stderr
	var err error
	if cc.in, err = cc.cmd.StdinPipe(); err != nil {
		return 0, err
	}
	out, err := cc.cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cc.cmd.Start(); err != nil {
		return 0, err
	}
	cc.t.Cleanup(func() {
		_ = cc.cmd.Process.Kill() // the child we started; a no-op once it has exited
		_ = cc.cmd.Wait()
	})
	cc.lines = make(chan string, 16)
	go func() {
		defer close(cc.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "SOAK ") {
				cc.lines <- l
			}
		}
	}()
	ready, err := cc.expect("SOAK READY", 5*time.Minute)
	if err != nil {
		return 0, err
	}
	var ns int64
	var heap, stack, rssd float64
	if _, err := fmt.Sscanf(ready, "%d %f %f %f", &ns, &heap, &stack, &rssd); err != nil {
		return 0, fmt.Errorf("client process: READY %q: %v", ready, err)
	}
	cc.figures = fmt.Sprintf("client process per connection: heap in use %.0f B, goroutine stacks %.0f B, RSS %.0f B", heap/float64(n), stack/float64(n), rssd/float64(n))
	return time.Duration(ns), nil
}

func (cc *childClients) echo(string) error {
	if _, err := io.WriteString(cc.in, "echo\n"); err != nil {
		return err
	}
	_, err := cc.expect("SOAK ECHOED", 2*time.Minute)
	return err
}

func (cc *childClients) close() error {
	if _, err := io.WriteString(cc.in, "close\n"); err != nil {
		return err
	}
	if _, err := cc.expect("SOAK CLOSED", 2*time.Minute); err != nil {
		return err
	}
	return cc.cmd.Wait()
}

// TestSoakClientProcess is the client process of TestSoak when the
// descriptor limit does not let one process hold both ends; it is skipped
// otherwise.
func TestSoakClientProcess(t *testing.T) {
	url := os.Getenv("WSLIMIT_SOAK_CLIENT")
	if url == "" {
		t.Skip("the client process of TestSoak")
	}
	n, _ := strconv.Atoi(os.Getenv("WSLIMIT_SOAK_N"))
	fail := func(err error) {
		fmt.Printf("SOAK ERROR %v\n", err)
		os.Exit(1)
	}
	lc := &localClients{}
	before := snap()
	took, err := lc.open(url, n)
	if err != nil {
		fail(err)
	}
	live := snap()
	fmt.Printf("SOAK READY %d %d %d %d\n", took.Nanoseconds(), live.heap-before.heap, live.stack-before.stack, live.rss-before.rss)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "echo":
			if err := lc.echo("echo after the hold"); err != nil {
				fail(err)
			}
			fmt.Println("SOAK ECHOED")
		case "close":
			_ = lc.close()
			fmt.Println("SOAK CLOSED")
			return
		}
	}
	fail(errors.New("stdin closed"))
}

func TestSoak(t *testing.T) {
	if !*soakFlag && !envBool("WSLIMIT_SOAK") {
		t.Skip("heavy: run with -wslimit.soak or WSLIMIT_SOAK=1")
	}
	if raceEnabled {
		t.Skip("SKIPPED: the race detector allows 8128 goroutines and the soak holds one per connection: run without -race")
	}
	n := *soakConns
	var clients soakClients
	what := "both ends of every connection in this process"
	switch lim := raiseNoFile(t, uint64(2*n+5000)); {
	case lim >= uint64(2*n+5000):
		clients = &localClients{}
	case lim >= uint64(n+5000):
		clients = &childClients{t: t}
		what = "server ends in this process, client ends in a child process"
		t.Logf("RLIMIT_NOFILE %d leaves no room for %d descriptors: the clients run in a child process", lim, 2*n+5000)
	default:
		t.Skipf("SKIPPED LOUDLY: RLIMIT_NOFILE %d is below the %d descriptors even one end of the soak needs: raise the hard limit (ulimit -Hn, or CAP_SYS_RESOURCE)", lim, n+5000)
	}

	doc := fmt.Sprintf("version: 1\nrules:\n  - {name: per-ip, key: ip, connections: %d}\n  - {name: all, key: global, connections: %d}\n", n, n)
	ts := newTestServer(t, doc, nil) // the echo handler: one goroutine per connection, blocked in a read
	stats := func() string {
		a, b := ts.store.Stats("per-ip"), ts.store.Stats("all")
		return fmt.Sprintf("per-ip{conns=%d keys=%d} all{conns=%d keys=%d}", a.Connections, a.Keys, b.Connections, b.Keys)
	}
	exact := func(want int) bool {
		a, b := ts.store.Stats("per-ip"), ts.store.Stats("all")
		return a.Connections == want && b.Connections == want && a.Keys == min(want, 1) && b.Keys == min(want, 1)
	}

	before := snap()
	defer clients.close()
	dialTook, err := clients.open(ts.url(), n) // all from 127.0.0.1: the per-ip cap fills with the global one
	if err != nil {
		t.Fatalf("%v; %s", err, stats())
	}
	if !exact(n) {
		t.Fatalf("%d live connections: %s, want %d slots under one key in each rule", n, stats(), n)
	}

	// The cap is exact: the next connection is refused, by per-ip from
	// the same address and by the global cap from another.
	for _, tc := range []struct{ src, rule string }{{"127.0.0.1", "per-ip"}, {"127.0.0.2", "all"}} {
		if tc.src != "127.0.0.1" && len(loopbackSources(2)) < 2 {
			continue
		}
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.src)}, Control: sourceControl, Timeout: 30 * time.Second}
		d := &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 30 * time.Second}
		c, resp, err := d.Dial(ts.url(), nil)
		if err == nil {
			c.Close()
			t.Fatalf("connection %d from %s admitted over the cap", n+1, tc.src)
		}
		if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("connection %d from %s: %v, want 429", n+1, tc.src, err)
		}
		var body struct{ Rule string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if body.Rule != tc.rule {
			t.Errorf("connection %d from %s refused by %q, want %q", n+1, tc.src, body.Rule, tc.rule)
		}
		if !exact(n) {
			t.Fatalf("after the refusal from %s: %s", tc.src, stats())
		}
	}
	live := snap()

	// Hold: the counts stay exact while nothing happens.
	holdStart := time.Now()
	for time.Since(holdStart) < *soakHold {
		time.Sleep(250 * time.Millisecond)
		if !exact(n) {
			t.Fatalf("during the hold: %s", stats())
		}
	}
	if err := clients.echo("echo after the hold"); err != nil {
		t.Fatal(err)
	}

	closeStart := time.Now()
	if err := clients.close(); err != nil {
		t.Errorf("closing: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !exact(0) {
		if time.Now().After(deadline) {
			t.Fatalf("30 s after closing every connection: %s", stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	released := time.Since(closeStart)
	after := snap()

	per := func(d int64) float64 { return float64(d) / float64(n) }
	t.Logf("%d live WebSockets (%s; one server goroutine each) opened in %v (%.0f handshakes/s), each echoed once, held %v, each echoed again; connection %d refused by per-ip and by all; every slot released %v after the close began",
		n, what, dialTook.Round(time.Millisecond), float64(n)/dialTook.Seconds(), *soakHold, n+1, released.Round(time.Millisecond))
	t.Logf("this process per connection: heap in use %.0f B, goroutine stacks %.0f B, RSS %.0f B; goroutines %d -> %d",
		per(live.heap-before.heap), per(live.stack-before.stack), per(live.rss-before.rss), before.goroutines, live.goroutines)
	if cc, ok := clients.(*childClients); ok {
		t.Log(cc.figures)
	}
	t.Logf("totals: heap in use %.1f -> %.1f MiB, stacks %.1f -> %.1f MiB, RSS %.1f -> %.1f MiB; after closing: heap %.1f MiB, RSS %.1f MiB, goroutines %d",
		mib(before.heap), mib(live.heap), mib(before.stack), mib(live.stack), mib(before.rss), mib(live.rss), mib(after.heap), mib(after.rss), after.goroutines)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
