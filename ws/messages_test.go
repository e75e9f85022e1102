package ws

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy/messages"
	"github.com/wslimit/wslimit/policy/reload"
)

// msgServer is a guarded server on loopback with the real clock (time is
// the subject of these tests) that records the message limits' violations.
type msgServer struct {
	*httptest.Server
	g  *Guard
	mu sync.Mutex
	vs []messages.Violation
}

func (s *msgServer) violations() []messages.Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]messages.Violation(nil), s.vs...)
}

// newMsgServer serves handle(c, start) for every admitted connection;
// start is taken before the upgrade, so before the connection's buckets
// exist.
func newMsgServer(t *testing.T, doc string, handle func(c *Conn, r *http.Request, start time.Time)) *msgServer {
	t.Helper()
	s := &msgServer{}
	g, err := New(mustPolicy(t, doc), Options{OnMessageLimit: func(v messages.Violation) {
		s.mu.Lock()
		s.vs = append(s.vs, v)
		s.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	s.g = g
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		handle(c, r, start)
	}))
	s.Config.ErrorLog = quietLog()
	s.Start()
	t.Cleanup(func() {
		s.Server.Close()
		_ = g.Close()
	})
	return s
}

func (s *msgServer) url(query string) string {
	return "ws" + strings.TrimPrefix(s.URL, "http") + "/ws" + query
}

// dialFrom dials from the loopback source address src (when valid).
func dialFrom(t *testing.T, url string, src net.IP) *websocket.Conn {
	t.Helper()
	nd := &net.Dialer{Timeout: slack}
	if src != nil {
		nd.LocalAddr = &net.TCPAddr{IP: src}
	}
	d := websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: slack}
	c, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoLoop echoes every message until the connection ends.
func echoLoop(c *Conn) {
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

// flood writes small messages as fast as the connection takes them until
// it fails.
func flood(c *websocket.Conn) {
	msg := make([]byte, 64)
	for c.WriteMessage(websocket.BinaryMessage, msg) == nil {
	}
}

const throttleDoc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 10
messages:
  limits:
    - name: conn
      rate: 50/s
      burst: 50
`

// TestFloodThrottled: a flooding client is held to its limit by
// backpressure while a well-behaved client on the same server is not
// touched. Upper bound, checked at every message the server reads: at
// most burst + rate*elapsed (+1 for rounding), elapsed counted from
// before the upgrade; slowness can only lower the count. Lower bound,
// after a 4 s window: at least 90% of rate*elapsed, where burst +
// rate*elapsed is expected: the margin (the burst plus 10%) absorbs 1.4 s
// of stalls on a loaded machine, and a stall shorter than burst/rate (1 s)
// costs nothing since the bucket refills meanwhile.
func TestFloodThrottled(t *testing.T) {
	const rate, burst = 50.0, 50.0
	var (
		read   atomic.Int64 // messages the server read from the flooder
		breach atomic.Int64 // reads over the upper bound
		begun  atomic.Int64 // flooder's start, UnixNano
	)
	s := newMsgServer(t, throttleDoc, func(c *Conn, r *http.Request, start time.Time) {
		if r.URL.Query().Get("role") == "good" {
			echoLoop(c)
			return
		}
		begun.Store(start.UnixNano())
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
			n := read.Add(1)
			if float64(n) > burst+rate*time.Since(start).Seconds()+1 {
				breach.Add(1)
			}
		}
	})
	fl := dialFrom(t, s.url("?role=flood"), nil)
	go flood(fl)

	var goodSrc net.IP
	if runtime.GOOS == "linux" {
		goodSrc = net.IPv4(127, 0, 0, 2)
	}
	good := dialFrom(t, s.url("?role=good"), goodSrc)
	for i := 0; i < 20; i++ { // 5 messages a second, well under the limit
		echoOnce(t, good)
		time.Sleep(200 * time.Millisecond)
	}
	eventually(t, "the flooder's connection", func() bool { return begun.Load() != 0 })
	for time.Since(time.Unix(0, begun.Load())) < 4*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	n, el := read.Load(), time.Since(time.Unix(0, begun.Load())).Seconds()
	t.Logf("flooder: %d messages read in %.2fs; limit burst+rate*t = %.0f", n, el, burst+rate*el)
	if b := breach.Load(); b != 0 {
		t.Errorf("%d reads exceeded burst + rate*elapsed", b)
	}
	if float64(n) > burst+rate*el+1 || float64(n) < 0.9*rate*el {
		t.Errorf("flooder read %d messages in %.2fs, want between %.0f and %.0f", n, el, 0.9*rate*el, burst+rate*el+1)
	}
	if goodSrc != nil {
		for _, v := range s.violations() {
			if v.ClientIP.String() == "127.0.0.2" {
				t.Fatalf("the well-behaved client was limited: %+v", v)
			}
		}
	}
	if len(s.violations()) == 0 {
		t.Errorf("no violation reported for the flooder")
	}
}

// readClose reads until the connection fails and returns the close error.
func readClose(t *testing.T, c *websocket.Conn) *websocket.CloseError {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(slack))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: got %v, want a close frame", err)
		}
		return ce
	}
}

const closeDoc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 10
messages:
  action: close
  limits:
    - name: conn
      rate: 1/s
      burst: 5
`

// TestFloodClosed1008: over a close limit the connection is closed with
// 1008 and a reason naming the limit, after at most burst + rate*elapsed
// messages; a client sending 200 messages at once outruns 1/s on any
// machine.
func TestFloodClosed1008(t *testing.T) {
	var read atomic.Int64
	var readErr atomic.Value
	var el atomic.Int64
	s := newMsgServer(t, closeDoc, func(c *Conn, _ *http.Request, start time.Time) {
		for {
			_, _, err := c.ReadMessage()
			if err != nil {
				el.Store(int64(time.Since(start)))
				readErr.Store(err)
				return
			}
			read.Add(1)
		}
	})
	c := dialFrom(t, s.url(""), nil)
	go func() {
		for i := 0; i < 200 && c.WriteMessage(websocket.TextMessage, []byte("x")) == nil; i++ {
		}
	}()
	ce := readClose(t, c)
	if ce.Code != websocket.ClosePolicyViolation || !strings.HasPrefix(ce.Text, "conn: messages over 1/s") {
		t.Fatalf("close: got %d %q, want 1008 conn: messages over 1/s", ce.Code, ce.Text)
	}
	eventually(t, "the server's read error", func() bool { return readErr.Load() != nil })
	if err := readErr.Load().(error); !errors.Is(err, ErrMessageLimit) {
		t.Fatalf("server read error: got %v, want ErrMessageLimit", err)
	}
	n, limit := read.Load(), 5+time.Duration(el.Load()).Seconds()+1
	if n < 5 || float64(n) > limit {
		t.Fatalf("server read %d messages, want between the burst 5 and %.1f", n, limit)
	}
	if v := s.violations(); len(v) != 1 || v[0].Action != messages.ActionClose {
		t.Fatalf("violations: got %+v, want one close", v)
	}
}

// TestOversize1009Unbuffered: a 10 MiB message over max_size 64 KiB is
// refused with 1009 after at most max_size+1 bytes, never buffered: the
// bytes the whole process allocates meanwhile (TotalAlloc, cumulative, so
// GC timing does not matter) stay well below 10 MiB.
func TestOversize1009Unbuffered(t *testing.T) {
	const doc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 10
messages:
  max_size: 65536
`
	var got atomic.Int64
	var readErr atomic.Value
	s := newMsgServer(t, doc, func(c *Conn, _ *http.Request, _ time.Time) {
		_, msg, err := c.ReadMessage()
		got.Store(int64(len(msg)))
		readErr.Store(err)
	})
	big := make([]byte, 10<<20)
	c := dialFrom(t, s.url(""), nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	go func() { _ = c.WriteMessage(websocket.BinaryMessage, big) }()
	ce := readClose(t, c)
	eventually(t, "the server's read error", func() bool { return readErr.Load() != nil })
	runtime.ReadMemStats(&after)
	if ce.Code != websocket.CloseMessageTooBig || ce.Text != "max_size: message over 65536 bytes" {
		t.Fatalf("close: got %d %q, want 1009 with the reason", ce.Code, ce.Text)
	}
	if err := readErr.Load().(error); !errors.Is(err, ErrMessageLimit) || got.Load() != 0 {
		t.Fatalf("server read: %d bytes, %v; want none and ErrMessageLimit", got.Load(), err)
	}
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated while refusing 10 MiB: %d bytes", grew)
	if grew > 2<<20 {
		t.Fatalf("the process allocated %d bytes while refusing a 10 MiB message, want under 2 MiB", grew)
	}
	if v := s.violations(); len(v) != 1 || v[0].Reason != messages.ReasonSize {
		t.Fatalf("violations: got %+v, want one size", v)
	}
}

// TestPerKeyAcrossConnections: two connections of one user share the
// per-key limit (their reads together stay within burst + rate*elapsed,
// elapsed from before the first upgrade), and the key's entry goes with
// its last connection. The server closes them: a throttled connection
// sees its peer's close only after reading what the peer sent before it.
func TestPerKeyAcrossConnections(t *testing.T) {
	const doc = `version: 1
rules:
  - name: per-user
    key: header:X-User
    connections: 10
messages:
  limits:
    - name: user
      per: rule:per-user
      rate: 20/s
      burst: 20
`
	var read, breach atomic.Int64
	var mu sync.Mutex
	var t0 time.Time
	var conns []*Conn
	s := newMsgServer(t, doc, func(c *Conn, _ *http.Request, st time.Time) {
		mu.Lock()
		if t0.IsZero() {
			t0 = st
		}
		start := t0
		conns = append(conns, c)
		mu.Unlock()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
			if n := read.Add(1); float64(n) > 20+20*time.Since(start).Seconds()+1 {
				breach.Add(1)
			}
		}
	})
	h := http.Header{"X-User": {"alice"}}
	d := websocket.Dialer{HandshakeTimeout: slack}
	for range 2 {
		c, _, err := d.Dial(s.url(""), h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go flood(c)
	}
	eventually(t, "a per-key throttle", func() bool { return len(s.violations()) > 0 && read.Load() > 40 })
	if b := breach.Load(); b != 0 {
		t.Fatalf("%d reads over the shared limit", b)
	}
	if k := s.g.Messages().Keys(); k != 1 {
		t.Fatalf("per-key entries: got %d, want 1 (alice)", k)
	}
	mu.Lock()
	live := append([]*Conn(nil), conns...)
	mu.Unlock()
	if len(live) != 2 {
		t.Fatalf("server connections: got %d, want 2", len(live))
	}
	live[0].Close()
	if k := s.g.Messages().Keys(); k != 1 {
		t.Fatalf("per-key entries with one of alice's connections left: got %d, want 1", k)
	}
	live[1].Close()
	if k := s.g.Messages().Keys(); k != 0 {
		t.Fatalf("per-key entries after alice's last connection: got %d, want 0", k)
	}
}

// TestReloadReachesLiveConnections: a policy swapped in by SetPolicy
// applies to a connection opened before it.
func TestReloadReachesLiveConnections(t *testing.T) {
	s := newMsgServer(t, throttleDoc, func(c *Conn, _ *http.Request, _ time.Time) { echoLoop(c) })
	c := dialFrom(t, s.url(""), nil)
	for range 10 {
		echoOnce(t, c)
	}
	s.g.SetPolicy(mustPolicy(t, closeDoc))
	go func() {
		for i := 0; i < 50 && c.WriteMessage(websocket.TextMessage, []byte("ping")) == nil; i++ {
		}
	}()
	if ce := readClose(t, c); ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("after the reload: got %d %q, want 1008", ce.Code, ce.Text)
	}
}

// TestFileReloadReachesLiveConnections: policy/reload's watcher, applying
// with Guard.SetPolicy, brings a rewritten file's messages limits to a
// connection opened before the rewrite; a bad file keeps them.
func TestFileReloadReachesLiveConnections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(throttleDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newMsgServer(t, throttleDoc, func(c *Conn, _ *http.Request, _ time.Time) { echoLoop(c) })
	w, err := reload.Watch(t.Context(), path, s.g.SetPolicy, reload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c := dialFrom(t, s.url(""), nil)
	echoOnce(t, c)
	if err := os.WriteFile(path, []byte("version: 1\nmessages: {max_size: -1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(); err == nil {
		t.Fatal("a bad policy file reloaded")
	}
	for range 10 { // still the old limits: 50/s, burst 50
		echoOnce(t, c)
	}
	if err := os.WriteFile(path, []byte(closeDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := 0; i < 50 && c.WriteMessage(websocket.TextMessage, []byte("ping")) == nil; i++ {
		}
	}()
	if ce := readClose(t, c); ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("after the file reload: got %d %q, want 1008", ce.Code, ce.Text)
	}
}

// TestDryRunDoesNotAct: in dry run a close limit reports and lets every
// message through.
func TestDryRunDoesNotAct(t *testing.T) {
	s := newMsgServer(t, closeDoc+"mode: dry_run\n", func(c *Conn, _ *http.Request, _ time.Time) { echoLoop(c) })
	c := dialFrom(t, s.url(""), nil)
	for range 20 {
		echoOnce(t, c)
	}
	vs := s.violations()
	if len(vs) < 10 {
		t.Fatalf("got %d violations, want at least 10 of 20 messages over 1/s burst 5", len(vs))
	}
	for _, v := range vs {
		if v.Action != messages.ActionDryRun {
			t.Fatalf("violation %+v: want dry_run", v)
		}
	}
	st := s.g.Messages().Stats()
	if len(st) != 1 || st[0].Action != messages.ActionDryRun || st[0].Messages != uint64(len(vs)) {
		t.Fatalf("stats: got %+v", st)
	}
}

// TestNoMessagesSectionUnmetered: without a messages section, Conn reads
// are websocket.Conn's (no meter).
func TestNoMessagesSectionUnmetered(t *testing.T) {
	var metered atomic.Bool
	s := newMsgServer(t, capDoc(5), func(c *Conn, _ *http.Request, _ time.Time) {
		metered.Store(c.m != nil)
		echoLoop(c)
	})
	c := dialFrom(t, s.url(""), nil)
	echoOnce(t, c)
	if metered.Load() {
		t.Fatal("a connection without messages limits has a meter")
	}
}

// TestBytesThrottled: a byte limit holds a flood of 1 KiB messages to
// burst + rate*elapsed, plus what is read between two charges (a chunk,
// at most 16 KiB, and one message). Slowness can only lower the count.
func TestBytesThrottled(t *testing.T) {
	const doc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 10
messages:
  limits:
    - name: conn-bytes
      bytes: 64KiB/s
      bytes_burst: 65536
`
	const rate, burst, slackBytes = 64 << 10, 65536, 16<<10 + 1024
	var read, breach atomic.Int64
	done := make(chan struct{})
	s := newMsgServer(t, doc, func(c *Conn, _ *http.Request, start time.Time) {
		defer close(done)
		for time.Since(start) < 2*time.Second {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if n := read.Add(int64(len(msg))); float64(n) > burst+rate*time.Since(start).Seconds()+slackBytes {
				breach.Add(1)
			}
		}
	})
	c := dialFrom(t, s.url(""), nil)
	go func() {
		msg := make([]byte, 1024)
		for c.WriteMessage(websocket.BinaryMessage, msg) == nil {
		}
	}()
	select {
	case <-done:
	case <-time.After(slack):
		t.Fatal("the server did not finish its 2 s window")
	}
	t.Logf("read %d bytes in 2 s under 64 KiB/s, burst 64 KiB", read.Load())
	if b := breach.Load(); b != 0 {
		t.Fatalf("%d reads over burst + rate*elapsed + %d", b, slackBytes)
	}
	if read.Load() < burst {
		t.Fatalf("read %d bytes, want at least the burst %d", read.Load(), burst)
	}
	if st := s.g.Messages().Stats(); len(st) == 0 || st[0].Reason != messages.ReasonBytes || st[0].Action != messages.ActionThrottle {
		t.Fatalf("stats: got %+v, want byte throttles", st)
	}
}

// TestExemptUnmetered: an exempt client has no meter.
func TestExemptUnmetered(t *testing.T) {
	var metered atomic.Bool
	s := newMsgServer(t, closeDoc+"exempt: [127.0.0.1]\n", func(c *Conn, _ *http.Request, _ time.Time) {
		metered.Store(c.m != nil)
		echoLoop(c)
	})
	c := dialFrom(t, s.url(""), nil)
	for range 10 { // over the close limit's burst of 5
		echoOnce(t, c)
	}
	if metered.Load() {
		t.Fatal("an exempt client is metered")
	}
}

// TestMiddlewareMeterDropped: behind Middleware the meter is in the
// request's context and is closed with the hijacked connection, which
// drops its per-key entry.
func TestMiddlewareMeterDropped(t *testing.T) {
	const doc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 10
messages:
  limits:
    - name: ip
      per: rule:per-ip
      rate: 100/s
`
	g, err := New(mustPolicy(t, doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var up websocket.Upgrader
	got := make(chan *messages.Meter, 1)
	srv := httptest.NewServer(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- MeterFrom(r.Context())
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		go func() { // the handler returns; the connection lives on
			defer c.Close()
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
	})))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := <-got; m == nil {
		t.Fatal("MeterFrom: no meter")
	}
	if k := g.Messages().Keys(); k != 1 {
		t.Fatalf("per-key entries while connected: got %d, want 1", k)
	}
	c.Close()
	eventually(t, "the entry dropped with the connection", func() bool { return g.Messages().Keys() == 0 })
}

// TestMessageViolationsAreOffences: a connection closed by a messages
// limit is an offence for a penalty counting messages; with threshold 1
// its address is banned, so its next handshake is refused as banned.
func TestMessageViolationsAreOffences(t *testing.T) {
	doc := closeDoc + `penalties:
  - name: flooders
    key: ip
    offences: {messages: true}
    threshold: 1
    window: 1m
    ban: 10m
`
	s := newMsgServer(t, doc, func(c *Conn, _ *http.Request, _ time.Time) {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	c := dialFrom(t, s.url(""), nil)
	go func() {
		for i := 0; i < 200 && c.WriteMessage(websocket.TextMessage, []byte("x")) == nil; i++ {
		}
	}()
	if ce := readClose(t, c); ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("close: got %d %q, want 1008", ce.Code, ce.Text)
	}
	eventually(t, "the flooder's address banned", func() bool { return len(s.g.Penalties().Views(10)) == 1 })
	d := websocket.Dialer{HandshakeTimeout: slack}
	_, resp, err := d.Dial(s.url(""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("handshake after the ban: err %v, resp %v; want 429", err, resp)
	}
	if body, _ := io.ReadAll(resp.Body); !strings.Contains(string(body), `"banned"`) {
		t.Fatalf("refusal body %q, want reason banned", body)
	}
}
