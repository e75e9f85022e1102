package ws

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// shutdownStore is a memory store with a Shutdown method, as the Redis
// store has: it records how many connections were live when the guard
// called it (the batched release comes before the closes).
type shutdownStore struct {
	*policy.MemoryStore
	calls        atomic.Int32
	liveAtCall   atomic.Int64
	shutdownRule string
}

func (s *shutdownStore) Shutdown(context.Context) error {
	s.calls.Add(1)
	s.liveAtCall.Store(int64(s.Stats(s.shutdownRule).Connections))
	return nil
}

// TestGuardShutdown: five clients hold WebSockets; Shutdown calls the
// store's Shutdown while all five are still live, then every client reads
// a close frame with 1001 Going Away, every slot is released, and from
// then on Upgrade and Admit answer 503 with reason shutting_down and
// Retry-After: 1, evaluating no rule.
func TestGuardShutdown(t *testing.T) {
	const n = 5
	store := &shutdownStore{MemoryStore: policy.NewMemoryStore(), shutdownRule: "per-ip"}
	g, err := New(mustPolicy(t, capDoc(10)), Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mw" {
			if _, ok := g.Admit(w, r); ok {
				t.Error("Admit admitted during shutdown")
			}
			return
		}
		c, err := g.Upgrade(w, r, nil)
		if err != nil {
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
	defer srv.Close()
	defer g.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	d := websocket.Dialer{HandshakeTimeout: slack}
	var clients []*websocket.Conn
	for range n {
		c, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		echoOnce(t, c)
		clients = append(clients, c)
	}
	if got := store.Stats("per-ip").Connections; got != n {
		t.Fatalf("%d connections live, want %d", got, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), slack)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if c, live := store.calls.Load(), store.liveAtCall.Load(); c != 1 || live != n {
		t.Fatalf("store Shutdown called %d times with %d connections live, want once with %d", c, live, n)
	}
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(slack))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("client %d: %v, want close 1001", i, err)
		}
	}
	eventually(t, "every slot released", func() bool { return store.Stats("per-ip").Connections == 0 })

	_, resp, err := d.Dial(url, nil)
	if err == nil || resp == nil {
		t.Fatalf("handshake after Shutdown: %v, want 503", err)
	}
	expectShutdown503(t, resp)
	mw, err := http.Get(srv.URL + "/mw")
	if err != nil {
		t.Fatal(err)
	}
	expectShutdown503(t, mw)
	if got := store.Stats("per-ip").Connections; got != 0 {
		t.Fatalf("a refused handshake holds %d slots", got)
	}
}

func expectShutdown503(t *testing.T, resp *http.Response) {
	t.Helper()
	defer resp.Body.Close()
	var body rejectBody
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || body.Reason != "shutting_down" {
		t.Fatalf("got %d, Retry-After %q, reason %q; want 503, 1, shutting_down", resp.StatusCode, resp.Header.Get("Retry-After"), body.Reason)
	}
}
