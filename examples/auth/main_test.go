package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// slack bounds the waits of these tests, none of which is their subject
// (a handshake, a greeting or close frame that must arrive, a release
// polled until it shows): CI runs every package's tests at once, with
// -race, on 2 cores, and a stall of seconds must make a test slower, never
// fail it. A wait returns as soon as its condition holds.
const slack = 20 * time.Second

type demoServer struct {
	*httptest.Server
	store *policy.MemoryStore
	wsURL string
}

// newDemo runs the example's handler with the embedded policy over
// loopback, with a store the test can inspect.
func newDemo(t *testing.T) *demoServer {
	t.Helper()
	t.Setenv(secretEnv, "") // restored after the test; loadPolicy sets it
	p, secret, err := loadPolicy()
	if err != nil {
		t.Fatalf("embedded policy: %v", err)
	}
	store := policy.NewMemoryStore()
	g, err := newGuard(p, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newMux(g, &issuer{secret: secret, now: time.Now}))
	t.Cleanup(func() {
		srv.Close()
		g.Close()
		store.Close()
	})
	return &demoServer{Server: srv, store: store, wsURL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"}
}

// token fetches a demo token from /token.
func (s *demoServer) token(t *testing.T, user, plan string) string {
	t.Helper()
	resp, err := http.Get(s.URL + "/token?" + url.Values{"user": {user}, "plan": {plan}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr tokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != 200 || tr.Token == "" {
		t.Fatalf("/token for %s (%s): %d %+v %v", user, plan, resp.StatusCode, tr, err)
	}
	if tr.User != user || tr.Plan != plan {
		t.Fatalf("/token answered %+v for %s (%s)", tr, user, plan)
	}
	return tr.Token
}

// dial opens a WebSocket as a browser on the demo page would: subprotocols
// "chat" and "bearer.<token>" (no token: "chat" only).
func (s *demoServer) dial(t *testing.T, tok string, h http.Header) *websocket.Conn {
	t.Helper()
	protos := []string{appProtocol}
	if tok != "" {
		protos = append(protos, "bearer."+tok)
	}
	d := websocket.Dialer{HandshakeTimeout: slack, Subprotocols: protos}
	c, resp, err := d.Dial(s.wsURL, h)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if got := c.Subprotocol(); got != appProtocol {
		t.Errorf("selected subprotocol = %q, want %q", got, appProtocol)
	}
	for k, vs := range resp.Header {
		for _, v := range vs {
			if strings.Contains(v, "bearer") || (tok != "" && strings.Contains(v, tok)) {
				t.Errorf("token echoed in response header %s: %q", k, v)
			}
		}
	}
	return c
}

// admitted reads the greeting of an admitted connection.
func admitted(t *testing.T, c *websocket.Conn, user string, limit int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(slack))
	var w welcome
	if err := c.ReadJSON(&w); err != nil {
		t.Fatalf("%s: want a greeting, got %v", user, err)
	}
	if w.Type != "welcome" || w.User != user || w.Limit != limit {
		t.Fatalf("greeting %+v, want user %s with limit %d", w, user, limit)
	}
	_ = c.SetReadDeadline(time.Time{})
}

// refused reads the close frame of a refused connection.
func refused(t *testing.T, c *websocket.Conn, code int, reason string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(slack))
	_, msg, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != code || !strings.HasPrefix(ce.Text, reason) {
		t.Fatalf("got %q, %v; want close %d %q", msg, err, code, reason)
	}
}

func TestPage(t *testing.T) {
	s := newDemo(t)
	resp, err := http.Get(s.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "wslimit authenticated demo") {
		t.Fatalf("page: %d %q", resp.StatusCode, page[:min(len(page), 80)])
	}
	if !strings.Contains(string(page), `"bearer." + current.token`) {
		t.Error("page does not offer the token as a subprotocol")
	}
}

// TestPerUserLimits: alice (free) gets 3 connections and then a 1013 close;
// bob (pro) on the same address gets 10; each user's count is their own.
func TestPerUserLimits(t *testing.T) {
	s := newDemo(t)
	alice := s.token(t, "alice", "free")
	for i := 0; i < 3; i++ {
		admitted(t, s.dial(t, alice, nil), "alice", 3)
	}
	refused(t, s.dial(t, alice, nil), websocket.CloseTryAgainLater, "per-user: connections")

	bob := s.token(t, "bob", "pro")
	var bobs []*websocket.Conn
	for i := 0; i < 10; i++ {
		c := s.dial(t, bob, nil)
		admitted(t, c, "bob", 10)
		bobs = append(bobs, c)
	}
	refused(t, s.dial(t, bob, nil), websocket.CloseTryAgainLater, "per-user: connections")
	if got := s.store.Stats("per-ip").Connections; got != 13 {
		t.Errorf("per-ip holds %d slots, want 13 (refusals hold none)", got)
	}

	// An admitted connection echoes.
	if err := bobs[0].WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = bobs[0].SetReadDeadline(time.Now().Add(slack))
	if _, msg, err := bobs[0].ReadMessage(); err != nil || string(msg) != "hi" {
		t.Fatalf("echo: %q %v", msg, err)
	}

	// Closing frees bob's slots; alice's stay hers.
	for _, c := range bobs {
		c.Close()
	}
	deadline := time.Now().Add(slack)
	for s.store.Stats("per-ip").Connections != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("per-ip holds %d slots after bob left, want 3", s.store.Stats("per-ip").Connections)
		}
		time.Sleep(10 * time.Millisecond)
	}
	admitted(t, s.dial(t, bob, nil), "bob", 10)
	refused(t, s.dial(t, alice, nil), websocket.CloseTryAgainLater, "per-user: connections")
}

// TestMissingOrInvalidToken: no token, or one that does not verify, is a
// missing identity: close 1008, nothing counted.
func TestMissingOrInvalidToken(t *testing.T) {
	s := newDemo(t)
	good := s.token(t, "mallory", "pro")
	// Another process's secret: a well-formed token that does not verify.
	other := &issuer{secret: []byte(strings.Repeat("x", 64)), now: time.Now}
	forged, _, err := other.issue("mallory", "pro")
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"no token":      "",
		"bad signature": forged,
		"tampered":      good[:len(good)-4] + "AAAA",
		"garbage":       "not-a-token",
	} {
		t.Run(name, func(t *testing.T) {
			refused(t, s.dial(t, tok, nil), websocket.ClosePolicyViolation, "per-user: missing_identity")
		})
	}
	if got := s.store.Stats("per-ip").Connections; got != 0 {
		t.Errorf("refused handshakes hold %d per-ip slots", got)
	}
}

// TestOtherSources: the Authorization header (non-browser clients) and the
// cookie set by /token?cookie=1 identify the user too.
func TestOtherSources(t *testing.T) {
	s := newDemo(t)
	tok := s.token(t, "carol", "free")
	admitted(t, s.dial(t, "", http.Header{"Authorization": {"Bearer " + tok}}), "carol", 3)

	resp, err := http.Post(s.URL+"/token?user=dave&plan=pro&cookie=1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var tr tokenResponse
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if tr.Token != "" || !tr.Cookie {
		t.Errorf("cookie mode answered %+v; the token belongs in the HttpOnly cookie only", tr)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "token" {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.Path != "/ws" {
		t.Fatalf("cookie: %+v", cookie)
	}
	admitted(t, s.dial(t, "", http.Header{"Cookie": {cookie.String()}}), "dave", 10)
}

func TestTokenEndpoint(t *testing.T) {
	s := newDemo(t)
	for _, q := range []string{"", "user=", "user=a%20b", "user=" + strings.Repeat("a", 33), "user=alice&plan=gold"} {
		resp, err := http.Get(s.URL + "/token?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("/token?%s: %d, want 400", q, resp.StatusCode)
		}
	}
	// plan defaults to free.
	resp, err := http.Get(s.URL + "/token?user=erin")
	if err != nil {
		t.Fatal(err)
	}
	var tr tokenResponse
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if tr.Plan != "free" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("/token?user=erin: %+v, Cache-Control %q", tr, resp.Header.Get("Cache-Control"))
	}
}

// TestIdentityDoesNotLiftAddressLimit: users behind one address each have
// their own cap, but the per-ip rule (20) still bounds the address.
func TestIdentityDoesNotLiftAddressLimit(t *testing.T) {
	s := newDemo(t)
	for _, u := range []struct {
		name, plan string
		n          int
	}{{"alice", "free", 3}, {"bob", "pro", 10}, {"carol", "pro", 7}} {
		tok := s.token(t, u.name, u.plan)
		limit := 3
		if u.plan == "pro" {
			limit = 10
		}
		for i := 0; i < u.n; i++ {
			admitted(t, s.dial(t, tok, nil), u.name, limit)
		}
	}
	refused(t, s.dial(t, s.token(t, "carol", "pro"), nil), websocket.CloseTryAgainLater, "per-ip: connections")
}
