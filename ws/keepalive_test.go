package ws

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wslimit/wslimit/policy"
)

// Keepalive tests run real gorilla clients over loopback. Their bounds must
// hold on a loaded two-core machine under -race, so they are loose on the
// slow side ("released within PongWait + 10 s": the guard noticed at all,
// in about the configured time) and tight only where lateness cannot make
// them fail ("not released before PongWait/2": the guard did not close a
// connection before its peer could have been silent for long enough).

// noLeak checks, after the test's cleanups (servers closed), that no
// goroutine it started is left: pingers stop with their connections.
func noLeak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// keepaliveServer runs a guarded server with ka whose admitted connections
// are handled by handle; it returns the server and the store to watch.
func keepaliveServer(t *testing.T, ka Keepalive, handle func(c *Conn)) (*httptest.Server, *policy.MemoryStore) {
	t.Helper()
	store := policy.NewMemoryStore()
	g, err := New(mustPolicy(t, capDoc(10)), Options{Store: store, Keepalive: ka})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		handle(c)
	}))
	t.Cleanup(func() {
		srv.Close()
		_ = g.Close()
	})
	return srv, store
}

func dialKeepalive(t *testing.T, srv *httptest.Server) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// releasedAfter waits until the store holds no slot and returns how long
// that took from start; it fails after limit.
func releasedAfter(t *testing.T, store *policy.MemoryStore, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for store.Stats("per-ip").Connections != 0 {
		if time.Since(start) > limit {
			t.Fatalf("slot still held after %v", limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// echo is a handler that reads (so pongs are processed) and echoes.
func echo(c *Conn) {
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
}

// TestKeepaliveSilentPeer: a client that stays connected and keeps reading
// but never answers a ping (its ping handler is a no-op) loses its slot
// within PongWait + 10 s, and not before PongWait/2.
func TestKeepaliveSilentPeer(t *testing.T) {
	noLeak(t)
	const pongWait = time.Second
	srv, store := keepaliveServer(t, Keepalive{PingInterval: 200 * time.Millisecond, PongWait: pongWait, WriteTimeout: time.Second}, echo)
	c := dialKeepalive(t, srv)
	start := time.Now()
	c.SetPingHandler(func(string) error { return nil })
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	took := releasedAfter(t, store, start, pongWait+10*time.Second)
	if took < pongWait/2 {
		t.Errorf("released after %v, before PongWait/2: the guard did not wait for pongs", took)
	}
	t.Logf("released after %v (PongWait %v)", took, pongWait)
}

// TestKeepaliveNonReadingPeer: a client that never reads (it answers no
// ping, and its socket buffers fill while the server writes) loses its
// slot: the server's writes are bounded by WriteTimeout and the blocked
// write closes the connection, within WriteTimeout + 10 s of the start,
// though PongWait is far longer.
func TestKeepaliveNonReadingPeer(t *testing.T) {
	noLeak(t)
	const writeTimeout = time.Second
	writeErr := make(chan error, 1)
	srv, store := keepaliveServer(t, Keepalive{PingInterval: 30 * time.Second, PongWait: time.Minute, WriteTimeout: writeTimeout}, func(c *Conn) {
		defer c.Close()
		msg := make([]byte, 64<<10)
		for {
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				writeErr <- err
				return
			}
		}
	})
	dialKeepalive(t, srv) // and never read
	start := time.Now()
	took := releasedAfter(t, store, start, writeTimeout+10*time.Second)
	if took < writeTimeout/2 {
		t.Errorf("released after %v, before WriteTimeout/2", took)
	}
	select {
	case err := <-writeErr:
		t.Logf("released after %v; write error: %v", took, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked write did not return")
	}
}

// TestKeepaliveNonReadingHandler: the watchdog closes the connection of a
// silent peer even when the handler is not reading (so no read deadline
// fires): the client never reads, the handler only waits.
func TestKeepaliveNonReadingHandler(t *testing.T) {
	noLeak(t)
	const pongWait = time.Second
	done := make(chan struct{})
	srv, store := keepaliveServer(t, Keepalive{PingInterval: 200 * time.Millisecond, PongWait: pongWait}, func(c *Conn) {
		<-done
		c.Close()
	})
	dialKeepalive(t, srv)
	start := time.Now()
	took := releasedAfter(t, store, start, pongWait+10*time.Second)
	close(done)
	if took < pongWait/2 {
		t.Errorf("released after %v, before PongWait/2", took)
	}
}

// TestKeepaliveHealthyPeer: a client that reads (gorilla answers pings
// while reading) keeps its connection across many PongWaits, and the
// application's pong handler still runs.
func TestKeepaliveHealthyPeer(t *testing.T) {
	noLeak(t)
	pongs := make(chan struct{}, 100)
	srv, store := keepaliveServer(t, Keepalive{PingInterval: 100 * time.Millisecond, PongWait: 2 * time.Second}, func(c *Conn) {
		c.SetPongHandler(func(string) error {
			select {
			case pongs <- struct{}{}:
			default:
			}
			return nil
		})
		echo(c)
	})
	c := dialKeepalive(t, srv)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	time.Sleep(5 * time.Second)
	if n := store.Stats("per-ip").Connections; n != 1 {
		t.Fatalf("healthy connection: %d slots held, want 1", n)
	}
	select {
	case <-pongs:
	default:
		t.Error("the application's pong handler never ran")
	}
	c.Close()
	releasedAfter(t, store, time.Now(), 10*time.Second)
}

func TestKeepaliveOptions(t *testing.T) {
	if _, err := New(mustPolicy(t, capDoc(1)), Options{Keepalive: Keepalive{PingInterval: time.Second, PongWait: time.Second}}); err == nil {
		t.Error("PingInterval == PongWait accepted")
	}
	k, err := Keepalive{WriteTimeout: time.Second}.withDefaults()
	if err != nil || k.PongWait != DefaultPongWait || k.PingInterval != DefaultPongWait*9/10 {
		t.Errorf("defaults = %+v, %v", k, err)
	}
}
