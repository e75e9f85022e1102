package ws

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestAutoMode: requests with Origin (browsers) get a close code, the rest
// a 429.
func TestAutoMode(t *testing.T) {
	ts := newTestServer(t, capDoc(1)+"reject: {mode: auto}\n", nil)
	c1, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	_, resp, err := ts.dial(t, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("no Origin: %v, want 429", err)
	}
	c, _, err := ts.dial(t, http.Header{"Origin": {ts.URL}})
	if err != nil {
		t.Fatalf("with Origin: %v, want an upgrade then a close", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(slack))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseTryAgainLater {
		t.Fatalf("with Origin: %v, want close 1013", err)
	}
}

// TestClosePathBoundedPerIP: a client that forges Origin and never answers
// the close frame can hold at most max_closing_per_ip upgraded-and-closing
// connections; past that it gets cheap 429s.
func TestClosePathBoundedPerIP(t *testing.T) {
	ts := newTestServer(t, capDoc(1)+"reject: {mode: auto, max_closing: 100, max_closing_per_ip: 3}\n", nil)
	c1, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	var (
		mu       sync.Mutex
		upgraded []*websocket.Conn
		statuses int
	)
	start := time.Now()
	for i := 0; i < 10; i++ {
		if got := ts.g.Closing(); got > 3 {
			t.Errorf("closing = %d, bound 3", got)
		}
		// Never read: the server's close linger keeps each in place.
		c, resp, err := ts.dial(t, http.Header{"Origin": {ts.URL}})
		mu.Lock()
		if err == nil {
			upgraded = append(upgraded, c)
		} else if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			statuses++
		} else {
			t.Errorf("dial %d: %v", i, err)
		}
		mu.Unlock()
	}
	// Within one close linger, exactly the bound is upgraded. (On a very
	// slow machine early closes may finish first; the bound still holds.)
	if time.Since(start) < closeLinger/2 && (len(upgraded) != 3 || statuses != 7) {
		t.Errorf("upgraded %d, 429 %d; want 3 and 7", len(upgraded), statuses)
	}
	if got := ts.g.Closing(); got > 3 {
		t.Errorf("closing = %d, bound 3", got)
	}
	for _, c := range upgraded {
		c.Close()
	}
	eventually(t, "close path drained", func() bool { return ts.g.Closing() == 0 })
}

func TestRateLimitHeaders(t *testing.T) {
	ts := newTestServer(t, `version: 1
reject: {ratelimit_headers: true}
rules:
  - {name: slow, key: ip, rate: 1/10s, burst: 2}
  - {name: cap, key: global, connections: 5}
`, nil)
	for i := 0; i < 2; i++ {
		c, _, err := ts.dial(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	_, resp, err := ts.dial(t, nil)
	if err == nil || resp == nil || resp.StatusCode != 429 {
		t.Fatalf("third: %v, want 429", err)
	}
	if got, want := resp.Header.Get("RateLimit-Policy"), `"slow";q=2;w=20`; got != want {
		t.Errorf("RateLimit-Policy = %q, want %q", got, want)
	}
	if got, want := resp.Header.Get("RateLimit"), `"slow";r=0;t=10`; got != want {
		t.Errorf("RateLimit = %q, want %q", got, want)
	}
	if got := resp.Header.Get("Retry-After"); got != "10" {
		t.Errorf("Retry-After = %q, want 10", got)
	}
}
