package reload

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

const rule = "per-ip"

func capDoc(n int) string {
	return fmt.Sprintf("version: 1\nrules:\n  - name: per-ip\n    key: ip\n    connections: %d\n", n)
}

// syncBuffer is a log sink safe for the watcher's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a policy file in a temporary directory, a ws.Guard with an
// in-memory store serving an echo handler on loopback, and a Watcher that
// applies reloads of the file to the guard.
type harness struct {
	path   string
	store  *policy.MemoryStore
	srv    *httptest.Server
	w      *Watcher
	logs   *syncBuffer
	errs   atomic.Int32 // OnError calls
	writes int
}

// newHarness writes doc to dir/policy.yaml and starts everything on it.
func newHarness(t *testing.T, doc string, opts Options) *harness {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return newHarnessAt(t, path, opts)
}

// newHarnessAt starts everything on the existing policy file at path.
func newHarnessAt(t *testing.T, path string, opts Options) *harness {
	t.Helper()
	h := &harness{path: path, store: policy.NewMemoryStore(), logs: &syncBuffer{}}
	p, err := policy.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ws.New(p, ws.Options{Store: h.store})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return // the rejection has been written
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
	t.Cleanup(func() {
		h.srv.Close()
		_ = g.Close()
	})
	opts.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.OnError = func(error) { h.errs.Add(1) }
	h.w, err = Watch(t.Context(), path, g.SetPolicy, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.w.Close() }) // runs first: no log line after the test
	return h
}

// write replaces the policy file the way editors do: a new file in the same
// directory, renamed over the old one.
func (h *harness) write(t *testing.T, doc string) {
	t.Helper()
	h.writes++
	tmp := filepath.Join(filepath.Dir(h.path), fmt.Sprintf(".policy.yaml.%d.tmp", h.writes))
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		t.Fatal(err)
	}
}

// dial opens a WebSocket; status is 101 when admitted, else the refusal's
// HTTP status (0 when there was no response).
func (h *harness) dial() (c *websocket.Conn, status int, err error) {
	d := websocket.Dialer{HandshakeTimeout: slack}
	c, resp, err := d.Dial("ws"+strings.TrimPrefix(h.srv.URL, "http"), nil)
	if err == nil {
		return c, http.StatusSwitchingProtocols, nil
	}
	if resp != nil {
		return nil, resp.StatusCode, err
	}
	return nil, 0, err
}

// admit dials and requires the handshake to be admitted and the connection
// to echo.
func (h *harness) admit(t *testing.T) *websocket.Conn {
	t.Helper()
	c, status, err := h.dial()
	if err != nil {
		t.Fatalf("dial: status %d, %v; want admitted (live %d)", status, err, h.live())
	}
	if err := echo(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// refused dials and requires a 429.
func (h *harness) refused(t *testing.T) {
	t.Helper()
	c, status, err := h.dial()
	if err == nil {
		c.Close()
		t.Fatalf("handshake admitted with %d live, want 429", h.live())
	}
	if status != http.StatusTooManyRequests {
		t.Fatalf("dial: status %d, %v; want 429", status, err)
	}
}

func (h *harness) live() int { return h.store.Stats(rule).Connections }

// waitReloads waits until exactly n reloads were applied.
func (h *harness) waitReloads(t *testing.T, n uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("reload %d", n), func() bool { return h.w.Reloads() >= n })
	if got := h.w.Reloads(); got != n {
		t.Fatalf("Reloads() = %d, want %d", got, n)
	}
}

// closeAll closes the connections and waits until the server has released
// every slot and forgotten the key.
func (h *harness) closeAll(t *testing.T, conns ...*websocket.Conn) {
	t.Helper()
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "all slots released", func() bool {
		st := h.store.Stats(rule)
		return st.Connections == 0 && st.Keys == 0
	})
}

func echo(c *websocket.Conn) error {
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(slack))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "ping" {
		return fmt.Errorf("echo = %q, %v", msg, err)
	}
	return nil
}

// slack bounds every wait of these tests whose subject is not a timeout: a
// handshake, an echo, a reload or a release polled with waitFor. CI runs
// every package's tests at once, with -race, on 2 cores: a stall of seconds
// must make a test slower, never fail it. A wait returns as soon as its
// condition holds, so the bound costs nothing when all is well.
const slack = 20 * time.Second

// waitFor polls cond until it holds, for at most slack: file events and
// connection closes are seen asynchronously.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(slack)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestRaiseCapWithLiveConnections: a raised cap admits up to the new cap
// at once, counting the connections opened under the old policy.
func TestRaiseCapWithLiveConnections(t *testing.T) {
	h := newHarness(t, capDoc(2), Options{Debounce: 10 * time.Millisecond})
	c1, c2 := h.admit(t), h.admit(t)
	h.refused(t)

	h.write(t, capDoc(4))
	h.waitReloads(t, 1)

	if got := h.live(); got != 2 {
		t.Fatalf("live after reload = %d, want 2 (slots carry over by rule name)", got)
	}
	c3, c4 := h.admit(t), h.admit(t)
	h.refused(t) // the fifth: the two old connections still count
	if got := h.live(); got != 4 {
		t.Errorf("live = %d, want 4", got)
	}
	for _, c := range []*websocket.Conn{c1, c2} {
		if err := echo(c); err != nil {
			t.Errorf("connection from before the reload: %v", err)
		}
	}
	h.closeAll(t, c1, c2, c3, c4)

	logs := h.logs.String()
	for _, want := range []string{`msg="policy reloaded"`, "rules=1", "hash=" + h.w.Hash(), "trigger=file"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if h.w.Failures() != 0 || h.w.LastError() != nil {
		t.Errorf("Failures() = %d, LastError() = %v; want 0, nil", h.w.Failures(), h.w.LastError())
	}
}

// TestLowerCapWithLiveConnections: a lowered cap cuts no connection; new
// handshakes are refused until the live count is below the new cap.
func TestLowerCapWithLiveConnections(t *testing.T) {
	h := newHarness(t, capDoc(4), Options{Debounce: 10 * time.Millisecond})
	conns := []*websocket.Conn{h.admit(t), h.admit(t), h.admit(t), h.admit(t)}
	h.refused(t)

	h.write(t, capDoc(2))
	h.waitReloads(t, 1)

	for i, c := range conns {
		if err := echo(c); err != nil {
			t.Fatalf("connection %d was cut by the reload: %v", i, err)
		}
	}
	if got := h.live(); got != 4 {
		t.Fatalf("live after reload = %d, want 4", got)
	}
	h.refused(t)
	for i := 0; i < 2; i++ { // 3 then 2 live: still not below the cap
		conns[i].Close()
		want := 3 - i
		waitFor(t, fmt.Sprintf("%d live", want), func() bool { return h.live() == want })
		h.refused(t)
	}
	conns[2].Close()
	waitFor(t, "1 live", func() bool { return h.live() == 1 })
	c := h.admit(t)
	h.refused(t)
	h.closeAll(t, conns[3], c)
}

// TestMalformedFileKeepsPolicy: a file that does not load is reported with
// file:line:col, counted, and the running policy keeps running; fixing the
// file reloads.
func TestMalformedFileKeepsPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{
			name: "unknown field",
			doc:  "version: 1\nrules:\n  - name: per-ip\n    key: ip\n    connections: 4\n    conections: 5\n",
			want: `policy.yaml:6:5: rules[0].conections: unknown field "conections"`,
		},
		{
			name: "negative cap",
			doc:  "version: 1\nrules:\n  - name: per-ip\n    key: ip\n    connections: -4\n",
			want: "policy.yaml:5:18: rules[0].connections:",
		},
		{
			name: "syntax",
			doc:  "version: 1\nrules:\n  - name: per-ip\n    key: [ip\n    connections: 4\n",
			want: "policy.yaml:5:5: YAML syntax:",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, capDoc(2), Options{Debounce: 10 * time.Millisecond})
			c1, c2 := h.admit(t), h.admit(t)

			h.write(t, tc.doc)
			waitFor(t, "the failure", func() bool { return h.w.Failures() >= 1 })
			if got := h.w.Failures(); got != 1 {
				t.Errorf("Failures() = %d, want 1", got)
			}
			if got := h.w.Reloads(); got != 0 {
				t.Errorf("Reloads() = %d, want 0", got)
			}
			err := h.w.LastError()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LastError() = %v, want it to contain %q", err, tc.want)
			}
			if got := h.errs.Load(); got != 1 {
				t.Errorf("OnError called %d times, want 1", got)
			}
			logged, _, _ := strings.Cut(tc.want, `"`) // the log quotes the error
			if logs := h.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, logged) {
				t.Errorf("no error line with %q in the log:\n%s", logged, logs)
			}
			h.refused(t) // the old cap of 2 holds

			h.write(t, capDoc(3))
			h.waitReloads(t, 1)
			if err := h.w.LastError(); err != nil {
				t.Errorf("LastError() after the fix = %v, want nil", err)
			}
			c3 := h.admit(t)
			h.refused(t)
			if got := h.w.Failures(); got != 1 {
				t.Errorf("Failures() after the fix = %d, want 1", got)
			}
			h.closeAll(t, c1, c2, c3)
		})
	}
}

// TestReloadUnderLoad: under -race, the file is rewritten 20 times with
// alternating caps while handshakes are in flight. Every handshake is
// admitted or refused with 429, the live count never exceeds the larger
// cap, and once everything is closed the store holds nothing.
func TestReloadUnderLoad(t *testing.T) {
	const (
		dialers  = 4
		maxDials = 5000 // per dialer; the rewrites usually end the loop first
		rewrites = 20
		hi, lo   = 5, 2
	)
	h := newHarness(t, capDoc(lo), Options{Debounce: 5 * time.Millisecond})
	var (
		wg                 sync.WaitGroup
		admitted, rejected atomic.Int64
		stop               = make(chan struct{})
		deadline           = time.Now().Add(30 * time.Second)
	)
	for i := 0; i < dialers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxDials && time.Now().Before(deadline); n++ {
				select {
				case <-stop:
					return
				default:
				}
				c, status, err := h.dial()
				switch {
				case err == nil:
					admitted.Add(1)
					if live := h.live(); live > hi {
						t.Errorf("live = %d above the largest cap %d", live, hi)
					}
					if err := echo(c); err != nil {
						t.Errorf("admitted connection: %v", err)
					}
					c.Close()
				case status == http.StatusTooManyRequests:
					rejected.Add(1)
				default:
					t.Errorf("handshake neither admitted nor 429: status %d, %v", status, err)
					return
				}
			}
		}()
	}
	for i := 1; i <= rewrites; i++ {
		n := lo
		if i%2 == 1 {
			n = hi
		}
		h.write(t, capDoc(n))
		h.waitReloads(t, uint64(i))
	}
	close(stop)
	wg.Wait()
	h.closeAll(t)
	if admitted.Load() == 0 {
		t.Error("no handshake admitted")
	}
	if h.w.Failures() != 0 {
		t.Errorf("Failures() = %d, LastError() = %v", h.w.Failures(), h.w.LastError())
	}
	t.Logf("%d admitted, %d refused across %d reloads", admitted.Load(), rejected.Load(), h.w.Reloads())
}

// TestUnchangedContentIsSkipped: a file event whose content hashes the same
// as the running policy's does nothing; Reload always reloads.
func TestUnchangedContentIsSkipped(t *testing.T) {
	h := newHarness(t, capDoc(2), Options{Debounce: time.Hour})
	base := h.w.Hash()
	if base == "" {
		t.Fatal("no baseline hash")
	}
	h.write(t, capDoc(2)) // same bytes, new inode
	if ok, err := h.w.reload("file", false); ok || err != nil {
		t.Fatalf("reload of unchanged content = %v, %v; want false, nil", ok, err)
	}
	if got := h.w.Reloads(); got != 0 {
		t.Fatalf("Reloads() = %d, want 0", got)
	}
	if err := h.w.Reload(); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	h.write(t, capDoc(3))
	if err := h.w.Reload(); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	if got := h.w.Reloads(); got != 2 {
		t.Errorf("Reloads() = %d, want 2", got)
	}
	if h.w.Hash() == base {
		t.Error("Hash() unchanged after a reload of new content")
	}
	conns := []*websocket.Conn{h.admit(t), h.admit(t), h.admit(t)}
	h.refused(t)
	h.closeAll(t, conns...)
}

// TestReloadErrorThenRevert: a bad file followed by the running content
// clears LastError without a reload.
func TestReloadErrorThenRevert(t *testing.T) {
	h := newHarness(t, capDoc(2), Options{Debounce: time.Hour})
	h.write(t, "version: 2\n")
	if err := h.w.Reload(); err == nil || !strings.Contains(err.Error(), "policy.yaml:1:") {
		t.Fatalf("Reload() of a bad file = %v; want an error at policy.yaml:1:", err)
	}
	h.write(t, capDoc(2))
	if ok, err := h.w.reload("file", false); ok || err != nil {
		t.Fatalf("reload of the running content = %v, %v; want false, nil", ok, err)
	}
	if err := h.w.LastError(); err != nil {
		t.Errorf("LastError() = %v, want nil once the file is the running policy again", err)
	}
	if h.w.Failures() != 1 || h.w.Reloads() != 0 {
		t.Errorf("Failures() = %d, Reloads() = %d; want 1, 0", h.w.Failures(), h.w.Reloads())
	}
}

// TestDebounceCoalescesBurst: a burst of writes is read once, at its end.
//
// It bounds the number of reloads of a burst, not a latency: the five
// writes take well under a millisecond, and only a pause of a whole
// debounce between two of them (or in the watcher between two of their
// events) may split the burst. The debounce is 2 s, so a pause needs
// seconds; a burst that nevertheless took half the debounce to write
// proves nothing about coalescing and is written again (with a new
// harness) rather than failed: slowness costs time, never the verdict.
func TestDebounceCoalescesBurst(t *testing.T) {
	t.Parallel() // it waits out the debounce
	const debounce = 2 * time.Second
	for attempt := 1; ; attempt++ {
		h := newHarness(t, capDoc(1), Options{Debounce: debounce})
		began := time.Now()
		for n := 2; n <= 6; n++ {
			h.write(t, capDoc(n))
		}
		took := time.Since(began)
		want := digest([]byte(capDoc(6)))
		// Hash changes before the reload is counted (a reload counts once
		// it is complete): wait for both, or a reload seen half way looks
		// like none.
		waitFor(t, "the reload of the last content", func() bool { return h.w.Hash() == want && h.w.Reloads() >= 1 })
		if took >= debounce/2 {
			if attempt < 3 {
				t.Logf("attempt %d: the burst took %v to write, half the debounce %v: writing it again", attempt, took, debounce)
				continue
			}
			t.Skipf("the burst of 5 writes took %v, half the debounce %v, %d times: the machine is too slow to test coalescing", took, debounce, attempt)
		}
		if got := h.w.Reloads(); got != 1 {
			t.Errorf("Reloads() = %d after a burst of 5 writes in %v (debounce %v), want 1", got, took, debounce)
		}
		return
	}
}

// TestStateChangeWarns: state settings the store was built with cannot be
// reloaded; the reload applies the rest and says so.
func TestStateChangeWarns(t *testing.T) {
	h := newHarness(t, capDoc(2), Options{Debounce: time.Hour})
	h.write(t, capDoc(3)+"state:\n  max_keys: 10\n  on_full: refuse\n")
	if err := h.w.Reload(); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "state settings need a restart") || !strings.Contains(logs, "state.on_full") {
		t.Errorf("no restart warning naming state.on_full:\n%s", logs)
	}
	if strings.Contains(logs, "state.max_keys") || strings.Contains(logs, "state.store") {
		t.Errorf("warning names a field that did not need it:\n%s", logs)
	}
}

func TestWatchErrors(t *testing.T) {
	apply := func(*policy.Policy) {}
	for _, tc := range []struct {
		name  string
		path  string
		apply func(*policy.Policy)
	}{
		{"empty path", "", apply},
		{"nil apply", filepath.Join(t.TempDir(), "policy.yaml"), nil},
		{"no directory", filepath.Join(t.TempDir(), "missing", "policy.yaml"), apply},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Watch(t.Context(), tc.path, tc.apply, Options{})
			if err == nil {
				_ = w.Close()
				t.Fatal("Watch succeeded")
			}
			if !strings.HasPrefix(err.Error(), "reload: ") {
				t.Errorf("error %q does not start with the package name", err)
			}
		})
	}
}

// TestReloadLogsOneLinePerProblem: a file with several problems is logged
// one record per problem, in the file's order, with no literal "\n" in a
// line.
func TestReloadLogsOneLinePerProblem(t *testing.T) {
	h := newHarness(t, capDoc(2), Options{Debounce: time.Hour})
	h.write(t, "rules:\n  - name: per-ip\n    key: ip\n    connections: -4\n    conections: 5\n")
	if err := h.w.Reload(); err == nil {
		t.Fatal("Reload() of a bad file succeeded")
	}
	var lines []string
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, "policy reload failed") {
			lines = append(lines, l)
		}
	}
	want := []string{"policy.yaml:1:1: version: required", "policy.yaml:4:18: rules[0].connections:", "policy.yaml:5:5: rules[0].conections:"}
	if len(lines) != len(want) {
		t.Fatalf("%d reload-failed lines, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if !strings.Contains(l, want[i]) || !strings.Contains(l, "problems=3") || strings.Contains(l, `\n`) {
			t.Errorf("line %d = %s\nwant it to hold %q and problems=3, and no \\n", i, l, want[i])
		}
	}
}
