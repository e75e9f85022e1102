package ws

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// memConn is a network connection that accepts every write and has nothing
// to read: enough for gorilla to write its 101 response.
type memConn struct{}

var memAddr = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1234}

func (memConn) Read([]byte) (int, error)                          { return 0, net.ErrClosed }
func (memConn) Write(p []byte) (int, error)                       { return len(p), nil }
func (memConn) Close() error                                      { return nil }
func (memConn) LocalAddr() net.Addr                               { return memAddr }
func (memConn) RemoteAddr() net.Addr                              { return memAddr }
func (memConn) SetDeadline(time.Time) error                       { return nil }
func (memConn) SetReadDeadline(time.Time) error                   { return nil }
func (memConn) SetWriteDeadline(time.Time) error                  { return nil }
func (w *memWriter) Header() http.Header                          { return w.h }
func (w *memWriter) Write(p []byte) (int, error)                  { return len(p), nil }
func (w *memWriter) WriteHeader(int)                              {}
func (w *memWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) { return memConn{}, w.brw, nil }

// memWriter is a hijackable ResponseWriter over a memConn. Its buffers are
// reused from one handshake to the next, as gorilla leaves them empty.
type memWriter struct {
	h   http.Header
	brw *bufio.ReadWriter
}

func newMemWriter() *memWriter {
	return &memWriter{
		h:   http.Header{},
		brw: bufio.NewReadWriter(bufio.NewReader(memConn{}), bufio.NewWriter(memConn{})),
	}
}

func handshakeRequest() *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://example.com/ws", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	return r
}

// TestUpgradeAllocs bounds what a guarded handshake allocates beyond an
// unguarded one (gorilla's own allocations cancel out): the Decision
// (policy), the Conn with its wrappers (ws), the two allocations of
// runtime.AddCleanup, and the weak pointer by which Shutdown finds the
// live connections (weak.Make). It also checks that the Conn does not keep the
// response (and its request) alive.
func TestUpgradeAllocs(t *testing.T) {
	if raceEnabled {
		// The race detector allocates, and CI runs only -race: run this
		// test again in a build without it, so that CI still checks it.
		withoutRace(t)
		return
	}
	store := policy.NewMemoryStore()
	defer store.Close()
	g, err := New(mustPolicy(t, benchPolicy), Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var up websocket.Upgrader
	w, r := newMemWriter(), handshakeRequest()
	var last *Conn
	allocs := func(upgrade func() (interface{ Close() error }, error)) float64 {
		return testing.AllocsPerRun(200, func() {
			clear(w.h)
			c, err := upgrade()
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
	guarded := allocs(func() (interface{ Close() error }, error) {
		c, err := g.Upgrade(w, r, nil)
		last = c
		return c, err
	})
	unguarded := allocs(func() (interface{ Close() error }, error) { return up.Upgrade(w, r, nil) })
	t.Logf("allocations per handshake: guarded %.0f, unguarded %.0f", guarded, unguarded)
	if extra := guarded - unguarded; extra > 5 {
		t.Errorf("a guarded handshake allocates %.0f more than an unguarded one, want at most 5 (Decision, Conn, AddCleanup's two, weak.Make)", extra)
	}
	if n := store.Stats("everyone").Connections; n != 0 {
		t.Errorf("%d slots held after every connection closed", n)
	}
	if last.hw.ResponseWriter != nil {
		t.Error("the Conn keeps the ResponseWriter after the upgrade")
	}
}

// withoutRace runs the calling test again in this package built without
// the race detector (go test -run '^Name$'), and fails with its output if
// it fails.
func withoutRace(t *testing.T) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to run %s without the race detector: %v", t.Name(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "test", "-count=1", "-v", "-run", "^"+t.Name()+"$", ".")
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s without the race detector: %v\n%s", t.Name(), err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s without the race detector did not pass:\n%s", t.Name(), out)
	}
	t.Logf("passed without the race detector")
}
