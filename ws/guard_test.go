package ws

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mustPolicy(t testing.TB, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(doc), t.Name()+".yaml")
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return p
}

// testServer runs a guarded echo server on loopback. handle, when set,
// replaces the echo handler after a successful upgrade.
type testServer struct {
	*httptest.Server
	g     *Guard
	store *policy.MemoryStore
	clock *fakeClock
	errs  chan error
}

func newTestServer(t *testing.T, doc string, handle func(c *Conn)) *testServer {
	t.Helper()
	ts := &testServer{store: policy.NewMemoryStore(), clock: newClock(), errs: make(chan error, 1024)}
	g, err := New(mustPolicy(t, doc), Options{Store: ts.store, Now: ts.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts.g = g
	ts.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			select {
			case ts.errs <- err:
			default:
			}
			return
		}
		if handle != nil {
			handle(c)
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}))
	ts.Config.ErrorLog = quietLog() // handler panics are part of the tests
	ts.Start()
	t.Cleanup(func() {
		ts.Server.Close()
		_ = g.Close()
	})
	return ts
}

func (ts *testServer) url() string { return "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws" }

func (ts *testServer) dial(t testing.TB, h http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: slack}
	return d.Dial(ts.url(), h)
}

func (ts *testServer) conns(rule string) int { return ts.store.Stats(rule).Connections }

// slack bounds every wait of these tests whose subject is not a timeout: a
// handshake, a read that must succeed, a condition polled with eventually.
// CI runs every package's tests at once, with -race, on 2 cores: a stall of
// seconds must make a test slower, never fail it. A wait that succeeds
// returns as soon as it does, so the bound costs nothing when all is well.
const slack = 20 * time.Second

// eventually polls cond until it holds or slack passes: the server notices
// a closed connection asynchronously.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(slack)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func echoOnce(t *testing.T, c *websocket.Conn) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(slack))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "ping" {
		t.Fatalf("echo = %q, %v", msg, err)
	}
}

const capPolicy = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: %d
`

func capDoc(n int) string { return strings.Replace(capPolicy, "%d", itoa(n), 1) }

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestCapExactUnderConcurrency: cap N admits exactly N of N+k concurrent
// handshakes.
func TestCapExactUnderConcurrency(t *testing.T) {
	const n, extra = 10, 30
	ts := newTestServer(t, capDoc(n), nil)
	var (
		wg       sync.WaitGroup
		admitted atomic.Int32
		rejected atomic.Int32
		mu       sync.Mutex
		open     []*websocket.Conn
	)
	start := make(chan struct{})
	for i := 0; i < n+extra; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, resp, err := ts.dial(t, nil)
			if err == nil {
				admitted.Add(1)
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
				return
			}
			if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
				rejected.Add(1)
				return
			}
			t.Errorf("dial: %v", err)
		}()
	}
	close(start)
	wg.Wait()
	if got := admitted.Load(); got != n {
		t.Errorf("admitted %d, want exactly %d", got, n)
	}
	if got := rejected.Load(); got != extra {
		t.Errorf("rejected %d, want %d", got, extra)
	}
	if got := ts.conns("per-ip"); got != n {
		t.Errorf("slots held = %d, want %d", got, n)
	}
	for _, c := range open {
		c.Close()
	}
	eventually(t, "all slots released", func() bool { return ts.conns("per-ip") == 0 })
	if got := ts.store.Stats("per-ip").Keys; got != 0 {
		t.Errorf("tracked keys after release = %d, want 0 (counter exists only while above zero)", got)
	}
}

// TestAllOrNothing: a handshake refused by one rule holds no slot and
// spends no token in another.
func TestAllOrNothing(t *testing.T) {
	ts := newTestServer(t, `version: 1
rules:
  - name: tokens
    key: ip
    rate: 1/h
    burst: 3
    connections: 100
  - name: cap
    key: global
    connections: 1
`, nil)
	c1, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatalf("first dial: %v", err)
	}
	for i := 0; i < 5; i++ {
		_, resp, err := ts.dial(t, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("dial %d under full cap: err %v resp %v, want 429", i, err, resp)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if body["rule"] != "cap" || body["reason"] != "connections" {
			t.Errorf("body = %v, want rule cap, reason connections", body)
		}
	}
	if got := ts.conns("tokens"); got != 1 {
		t.Errorf("tokens rule holds %d slots after refusals, want 1", got)
	}
	c1.Close()
	eventually(t, "release", func() bool { return ts.conns("cap") == 0 })
	// Two tokens remain (burst 3, one spent, refusals spent none, clock
	// frozen): two more handshakes in turn, then the bucket refuses.
	for i := 0; i < 2; i++ {
		c, _, err := ts.dial(t, nil)
		if err != nil {
			t.Fatalf("dial %d after release: %v (refused handshakes spent tokens?)", i, err)
		}
		c.Close()
		eventually(t, "release", func() bool { return ts.conns("cap") == 0 })
	}
	_, resp, err := ts.dial(t, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth handshake: err %v, want 429", err)
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if body["rule"] != "tokens" || body["reason"] != "rate" {
		t.Errorf("body = %v, want rule tokens, reason rate", body)
	}
	if got := ts.conns("cap"); got != 0 {
		t.Errorf("cap holds %d after a rate refusal, want 0", got)
	}
}

// TestRejection429: status, Retry-After from the real refill time, JSON body.
func TestRejection429(t *testing.T) {
	ts := newTestServer(t, `version: 1
rules:
  - name: slow
    key: ip
    rate: 1/10s
    burst: 1
`, nil)
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ts.clock.Advance(2500 * time.Millisecond) // 7.5 s to the next token
	_, resp, err := ts.dial(t, nil)
	if err == nil || resp == nil {
		t.Fatalf("want refusal, got err %v", err)
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("status = %d, want 429", resp.StatusCode)
	}
	if got := resp.Header.Get("Retry-After"); got != "8" {
		t.Errorf("Retry-After = %q, want 8 (7.5 s rounded up)", got)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var body struct {
		Rule       string `json:"rule"`
		Reason     string `json:"reason"`
		RetryAfter int    `json:"retry_after"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Rule != "slow" || body.Reason != "rate" || body.RetryAfter != 8 {
		t.Errorf("body = %+v", body)
	}
	ts.clock.Advance(7500 * time.Millisecond)
	c, _, err = ts.dial(t, nil)
	if err != nil {
		t.Fatalf("after refill: %v", err)
	}
	c.Close()
}

func TestCapRejectionRetryAfter(t *testing.T) {
	ts := newTestServer(t, capDoc(1)+"reject: {cap_retry_after: 4s}\n", nil)
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, resp, err := ts.dial(t, nil)
	if err == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "4" {
		t.Fatalf("cap refusal: err %v status %v retry %q", err, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestCloseMode: a refused browser-style handshake is upgraded, closed
// with 1013 and a reason, and never counts against a cap.
func TestCloseMode(t *testing.T) {
	ts := newTestServer(t, capDoc(1)+"reject: {mode: close}\n", nil)
	c1, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	for i := 0; i < 3; i++ {
		c, _, err := ts.dial(t, nil)
		if err != nil {
			t.Fatalf("close mode should upgrade: %v", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(slack))
		_, _, err = c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: %v, want a close error", err)
		}
		if ce.Code != websocket.CloseTryAgainLater {
			t.Errorf("close code = %d, want 1013", ce.Code)
		}
		if !strings.Contains(ce.Text, "per-ip: connections") {
			t.Errorf("close reason = %q, want rule and reason", ce.Text)
		}
		c.Close()
		if got := ts.conns("per-ip"); got != 1 {
			t.Errorf("slots = %d during close-mode refusals, want 1", got)
		}
	}
	echoOnce(t, c1)
}

func TestReleaseOnCloseAndDoubleClose(t *testing.T) {
	closed := make(chan struct{})
	ts := newTestServer(t, capDoc(2), func(c *Conn) {
		_, _, _ = c.ReadMessage()
		c.Close()
		c.Close()              // double Close
		c.NetConn().Close()    // and the network connection
		c.Decision().Release() // and an explicit release
		close(closed)
	})
	a, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := ts.conns("per-ip"); got != 2 {
		t.Fatalf("slots = %d, want 2", got)
	}
	a.Close()
	<-closed
	if got := ts.conns("per-ip"); got != 1 {
		t.Fatalf("after closing one connection several times: slots = %d, want 1 (double release freed another's slot?)", got)
	}
}

// TestReleaseOnFailedUpgrade: admitted, then gorilla refuses the upgrade
// (no Sec-WebSocket-Key): the slot returns at once.
func TestReleaseOnFailedUpgrade(t *testing.T) {
	ts := newTestServer(t, capDoc(1), nil)
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+"/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status = %d, want gorilla's 400", resp.StatusCode)
		}
		if got := ts.conns("per-ip"); got != 0 {
			t.Fatalf("after failed upgrade: slots = %d, want 0", got)
		}
	}
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatalf("cap 1 after failed upgrades: %v", err)
	}
	c.Close()
}

// TestReleaseOnHandlerPanic: the handler panics; its deferred Close runs.
func TestReleaseOnHandlerPanic(t *testing.T) {
	ts := newTestServer(t, capDoc(1), func(c *Conn) {
		defer c.Close()
		panic("handler bug")
	})
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(slack))
	_, _, _ = c.ReadMessage()
	eventually(t, "release after panic", func() bool { return ts.conns("per-ip") == 0 })
}

// TestReleaseOnClientReset: the client vanishes with a TCP RST.
func TestReleaseOnClientReset(t *testing.T) {
	ts := newTestServer(t, capDoc(1), nil)
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := ts.conns("per-ip"); got != 1 {
		t.Fatalf("slots = %d, want 1", got)
	}
	tcp := c.NetConn().(*net.TCPConn)
	if err := tcp.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	tcp.Close() // RST
	eventually(t, "release after RST", func() bool { return ts.conns("per-ip") == 0 })
	c2, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatalf("dial after reset: %v", err)
	}
	c2.Close()
}

// TestReleaseForgottenConnection: the application drops the connection
// without closing it (and the handler panics without a deferred Close);
// the slot is released once the connection is unreachable.
func TestReleaseForgottenConnection(t *testing.T) {
	for _, panics := range []bool{false, true} {
		name := "forgotten"
		if panics {
			name = "panic-without-close"
		}
		t.Run(name, func(t *testing.T) {
			// The handler keeps the connection reachable until the test
			// has seen its slot held: a collection between the handshake
			// and that check (any allocation may start one) would
			// otherwise release the slot first.
			checked := make(chan struct{})
			ts := newTestServer(t, capDoc(1), func(c *Conn) {
				<-checked
				if panics {
					panic("handler bug, no deferred Close")
				}
				// returns without Close: the application forgot it
			})
			c, _, err := ts.dial(t, nil)
			if err != nil {
				close(checked)
				t.Fatal(err)
			}
			defer c.Close()
			got := ts.conns("per-ip")
			close(checked)
			if got != 1 {
				t.Fatalf("slots = %d, want 1", got)
			}
			deadline := time.Now().Add(slack)
			for ts.conns("per-ip") != 0 {
				if time.Now().After(deadline) {
					t.Fatal("slot of an unreachable connection never released")
				}
				runtime.GC()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestCheckOriginStillRuns(t *testing.T) {
	store := policy.NewMemoryStore()
	g, err := New(mustPolicy(t, capDoc(5)), Options{Store: store, Upgrader: websocket.Upgrader{
		CheckOrigin: func(r *http.Request) bool { return r.Header.Get("Origin") == "https://good.example" },
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := g.Upgrade(w, r, nil); err == nil {
			defer c.Close()
			_, _, _ = c.ReadMessage()
		}
	}))
	defer srv.Close()
	u := "ws" + strings.TrimPrefix(srv.URL, "http")
	_, resp, err := websocket.DefaultDialer.Dial(u, http.Header{"Origin": {"https://evil.example"}})
	if err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bad origin: err %v, want 403", err)
	}
	if got := store.Stats("per-ip").Connections; got != 0 {
		t.Errorf("bad origin took a slot: %d", got)
	}
	c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Origin": {"https://good.example"}})
	if err != nil {
		t.Fatalf("good origin: %v", err)
	}
	c.Close()
}

func TestUpgradeReturnsRejectError(t *testing.T) {
	store := policy.NewMemoryStore()
	g, _ := New(mustPolicy(t, capDoc(1)), Options{Store: store})
	got := make(chan error, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		got <- err
		if err == nil {
			defer c.Close()
			_, _, _ = c.ReadMessage()
		}
	}))
	defer srv.Close()
	u := "ws" + strings.TrimPrefix(srv.URL, "http")
	c, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-got
	_, _, _ = websocket.DefaultDialer.DialContext(context.Background(), u, nil)
	err = <-got
	var re *RejectError
	if !errors.Is(err, ErrRejected) || !errors.As(err, &re) || re.Decision.Rule != "per-ip" {
		t.Errorf("Upgrade error = %v, want a *RejectError for per-ip", err)
	}
}

func TestNetConnUnwrap(t *testing.T) {
	got := make(chan net.Conn, 1)
	ts := newTestServer(t, capDoc(1), func(c *Conn) {
		defer c.Close()
		u, ok := c.NetConn().(interface{ Unwrap() net.Conn })
		if !ok {
			got <- nil
			return
		}
		got <- u.Unwrap()
	})
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := (<-got).(*net.TCPConn); !ok {
		t.Error("NetConn does not unwrap to the *net.TCPConn")
	}
}

// TestCheckOriginRunsOnce guards against running the application's
// CheckOrigin twice per handshake (once before admission, once in gorilla).
func TestCheckOriginRunsOnce(t *testing.T) {
	var calls atomic.Int32
	g, err := New(mustPolicy(t, capDoc(5)), Options{Upgrader: websocket.Upgrader{
		CheckOrigin: func(r *http.Request) bool { calls.Add(1); return true },
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := g.Upgrade(w, r, nil); err == nil {
			c.Close()
		}
	}))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := calls.Load(); got != 1 {
		t.Errorf("CheckOrigin ran %d times for one handshake, want 1", got)
	}
}
