package main

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/ws"
)

// TestDemoServer runs the demo's handler with the embedded policy over
// loopback: the page is served, /ws echoes, and the sixth connection from
// one address is closed with 1013 and a reason (close mode).
func TestDemoServer(t *testing.T) {
	p, err := loadPolicy("")
	if err != nil {
		t.Fatalf("embedded policy: %v", err)
	}
	g, err := ws.New(p, ws.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newMux(g))
	defer srv.Close()
	defer g.Close()

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "wslimit demo") {
		t.Fatalf("page: %d %q", resp.StatusCode, page[:min(len(page), 80)])
	}

	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := 0; i < 5; i++ {
		c, _, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		open = append(open, c)
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
			t.Fatalf("echo %d: %q %v", i+1, msg, err)
		}
	}
	c, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("sixth connection should be upgraded then closed: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseTryAgainLater || !strings.HasPrefix(ce.Text, "per-ip: connections") {
		t.Fatalf("sixth connection: %v, want close 1013 per-ip: connections", err)
	}
}
