package ws

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cws "github.com/coder/websocket"
	gws "github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/gorilla/websocket"
)

// mwDeadline bounds every wait of these tests: the server notices a closed
// connection asynchronously, slowly on a loaded machine under -race.
const mwDeadline = 20 * time.Second

// mwServer is next behind g.Middleware on loopback.
type mwServer struct {
	*httptest.Server
	g *Guard
}

func newMWServer(t *testing.T, doc string, next http.Handler) *mwServer {
	t.Helper()
	g, err := New(mustPolicy(t, doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := &mwServer{g: g}
	s.Server = httptest.NewUnstartedServer(g.Middleware(next))
	s.Config.ErrorLog = quietLog() // handler panics are part of the tests
	s.Start()
	t.Cleanup(func() {
		s.Close()
		_ = g.Close()
	})
	return s
}

func (s *mwServer) wsURL() string { return "ws" + strings.TrimPrefix(s.URL, "http") + "/ws" }

func (s *mwServer) dial(h http.Header, protocols ...string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: protocols}
	return d.Dial(s.wsURL(), h)
}

// live is rule's live connections as the guard reports them.
func (s *mwServer) live(rule string) int {
	for _, ri := range s.g.Inspect(0).Rules {
		if ri.Name == rule && ri.LiveConnections != nil {
			return *ri.LiveConnections
		}
	}
	return -1
}

// waitLive polls until rule holds want connections.
func (s *mwServer) waitLive(t *testing.T, rule string, want int) {
	t.Helper()
	deadline := time.Now().Add(mwDeadline)
	for s.live(rule) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s live connections = %d, want %d", rule, s.live(rule), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkCapAndRelease: under cap 2 two clients are admitted (and echoed),
// the third gets 429; once the two close, their slots come back and two
// new clients are admitted.
func checkCapAndRelease(t *testing.T, s *mwServer) {
	t.Helper()
	for round := 0; round < 2; round++ {
		var held []*websocket.Conn
		for i := 0; i < 2; i++ {
			c, _, err := s.dial(nil)
			if err != nil {
				t.Fatalf("round %d, client %d: %v", round, i, err)
			}
			echoOnce(t, c)
			held = append(held, c)
		}
		s.waitLive(t, "per-ip", 2)
		_, resp, err := s.dial(nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("round %d, third client: %v, want 429", round, err)
		}
		for _, c := range held {
			c.Close()
		}
		s.waitLive(t, "per-ip", 0)
	}
}

// coderEcho is a coder/websocket server: Accept, echo until the client
// goes, in the handler.
func coderEcho(w http.ResponseWriter, r *http.Request) {
	c, err := cws.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := context.Background()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}

// gobwasEcho echoes on a gobwas/ws server connection until it fails.
func gobwasEcho(conn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}) {
	for {
		msg, op, err := wsutil.ReadClientData(conn)
		if err != nil {
			return
		}
		if err := wsutil.WriteServerMessage(conn, op, msg); err != nil {
			return
		}
	}
}

func TestMiddlewareCoderWebsocket(t *testing.T) {
	checkCapAndRelease(t, newMWServer(t, capDoc(2), http.HandlerFunc(coderEcho)))
}

// TestMiddlewareGobwas: gobwas/ws as it is used: the handler serves the
// connection itself, hands it to a goroutine and returns at once, or hands
// it off and never returns. The slot follows the connection in each.
func TestMiddlewareGobwas(t *testing.T) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	for name, handler := range map[string]http.HandlerFunc{
		"blocking": func(w http.ResponseWriter, r *http.Request) {
			conn, _, _, err := gws.UpgradeHTTP(r, w)
			if err != nil {
				return
			}
			defer conn.Close()
			gobwasEcho(conn)
		},
		"goroutine": func(w http.ResponseWriter, r *http.Request) {
			conn, _, _, err := gws.UpgradeHTTP(r, w)
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				gobwasEcho(conn)
			}()
		},
		"never-returns": func(w http.ResponseWriter, r *http.Request) {
			conn, _, _, err := gws.UpgradeHTTP(r, w)
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				gobwasEcho(conn)
			}()
			<-stop
		},
	} {
		t.Run(name, func(t *testing.T) {
			checkCapAndRelease(t, newMWServer(t, capDoc(2), handler))
		})
	}
}

// TestMiddlewareReverseProxy: httputil.ReverseProxy in front of a gorilla
// backend; the slot is the proxied connection's.
func TestMiddlewareReverseProxy(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
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
	t.Cleanup(backend.Close)
	u, err := url.Parse(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	checkCapAndRelease(t, newMWServer(t, capDoc(2), httputil.NewSingleHostReverseProxy(u)))
}

// TestMiddlewarePlainRequestsUncounted: requests that are not handshakes
// pass, even while the cap is full, and take no slot.
func TestMiddlewarePlainRequestsUncounted(t *testing.T) {
	s := newMWServer(t, capDoc(1), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			coderEcho(w, r)
			return
		}
		_, _ = w.Write([]byte("plain"))
	}))
	c, _, err := s.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s.waitLive(t, "per-ip", 1)
	for i := 0; i < 3; i++ {
		resp, err := http.Get(s.URL + "/page")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("plain request %d with the cap full: %d, want 200", i, resp.StatusCode)
		}
	}
	if got := s.live("per-ip"); got != 1 {
		t.Errorf("live after plain requests = %d, want 1", got)
	}
}

// TestMiddlewareNoHijack: a handler that answers a handshake without
// hijacking releases on return, and on panic. Its writer offers what
// libraries look for.
func TestMiddlewareNoHijack(t *testing.T) {
	var entered, leave = make(chan struct{}), make(chan struct{})
	var shapeOK atomic.Bool
	s := newMWServer(t, capDoc(1), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, isH := w.(http.Hijacker)
		_, isF := w.(http.Flusher)
		u, isU := w.(interface{ Unwrap() http.ResponseWriter })
		shapeOK.Store(isH && isF && isU && u.Unwrap() != nil)
		switch r.URL.Path {
		case "/ws/panic":
			panic(http.ErrAbortHandler)
		case "/ws/hold":
			entered <- struct{}{}
			<-leave
		}
		http.Error(w, "no", http.StatusForbidden)
	}))
	dial := func(path string) (*http.Response, error) {
		_, resp, err := (&websocket.Dialer{HandshakeTimeout: mwDeadline}).Dial(s.wsURL()+path, nil)
		return resp, err
	}
	done := make(chan *http.Response, 1)
	go func() { resp, _ := dial("/hold"); done <- resp }()
	<-entered
	if resp, _ := dial("/second"); resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("second handshake while the first handler runs: %v, want 429", resp)
	}
	close(leave)
	if resp := <-done; resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("first handshake: %v, want 403", resp)
	}
	s.waitLive(t, "per-ip", 0)
	if !shapeOK.Load() {
		t.Error("writer is not an http.Hijacker and http.Flusher with Unwrap")
	}
	_, _ = dial("/panic")
	s.waitLive(t, "per-ip", 0)
}

// TestMiddlewarePanicAfterHijack: the hijacked connection of a handler
// that panics is closed, which releases its slot.
func TestMiddlewarePanicAfterHijack(t *testing.T) {
	s := newMWServer(t, capDoc(1), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, _, err := gws.UpgradeHTTP(r, w); err == nil {
			panic("handler bug")
		}
	}))
	c, _, err := s.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(mwDeadline))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Error("connection of a panicking handler still open")
	}
	s.waitLive(t, "per-ip", 0)
}

// TestMiddlewareAutoMode: with Origin (a browser) the refusal is a close
// 1013 with a reason that the middleware's own upgrade sends; without, a
// 429. next never sees either.
func TestMiddlewareAutoMode(t *testing.T) {
	var calls atomic.Int32
	s := newMWServer(t, capDoc(1)+"reject: {mode: auto}\n", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		coderEcho(w, r)
	}))
	c1, _, err := s.dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, resp, err := s.dial(nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("no Origin: %v, want 429", err)
	}
	c, _, err := s.dial(http.Header{"Origin": {s.URL}})
	if err != nil {
		t.Fatalf("with Origin: %v, want an upgrade then a close", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(mwDeadline))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseTryAgainLater || !strings.Contains(ce.Text, "per-ip") {
		t.Fatalf("with Origin: %v, want close 1013 naming per-ip", err)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("next called %d times, want 1 (refusals never reach it)", got)
	}
	if got := s.live("per-ip"); got != 1 {
		t.Errorf("live = %d, want 1 (the closed refusal takes no slot)", got)
	}
	// An origin the Guard's Upgrader refuses gets the status, not an upgrade.
	if _, resp, err := s.dial(http.Header{"Origin": {"https://evil.example"}}); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("foreign Origin: %v, want 429", err)
	}
}

// TestMiddlewareStripsTokenProtocols: next sees the offer without the
// bearer token, so the library cannot echo it; the token still identifies
// the user.
func TestMiddlewareStripsTokenProtocols(t *testing.T) {
	t.Setenv("WSLIMIT_TEST_JWT_SECRET", testSecret)
	seen := make(chan []string, 1)
	s := newMWServer(t, identityPolicy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Values("Sec-Websocket-Protocol")
		c, err := cws.Accept(w, r, &cws.AcceptOptions{Subprotocols: []string{"chat"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, _, _ = c.Read(context.Background())
	}))
	tok := token(t, "frank", "")
	c, resp, err := s.dial(nil, "chat", "bearer."+tok)
	if err != nil {
		t.Fatalf("dial with subprotocol token: %v", err)
	}
	defer c.Close()
	if got := strings.Join(<-seen, ","); strings.Contains(got, tok) || !strings.Contains(got, "chat") {
		t.Errorf("next saw Sec-WebSocket-Protocol %q, want chat without the token", got)
	}
	if got := c.Subprotocol(); got != "chat" {
		t.Errorf("selected subprotocol = %q, want chat", got)
	}
	for k, vs := range resp.Header {
		for _, v := range vs {
			if strings.Contains(v, tok) {
				t.Errorf("token echoed in response header %s", k)
			}
		}
	}
	s.waitLive(t, "per-user", 1)
}
