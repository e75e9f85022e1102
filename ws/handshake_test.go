package ws

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wslimit/wslimit/policy"
)

// decideCounter counts the limiter's decisions: a malformed handshake must
// reach none.
type decideCounter struct{ n atomic.Int64 }

func (o *decideCounter) Decided(*policy.Decision, time.Duration) { o.n.Add(1) }
func (o *decideCounter) Released(*policy.Decision)               {}

// TestMalformedHandshakeSpendsNothing: handshakes gorilla would refuse are
// refused before the policy (no token spent, no decision made), with
// gorilla's status and Sec-WebSocket-Version: 13; a valid handshake from
// the same address then still finds the whole burst.
func TestMalformedHandshakeSpendsNothing(t *testing.T) {
	ts := newTestServer(t, `version: 1
rules:
  - name: per-ip
    key: ip
    rate: 1/h
    burst: 1
`, nil)
	obs := &decideCounter{}
	ts.g.lim = policy.NewLimiter(ts.g.lim.Policy(), policy.Options{Store: ts.store, Now: ts.clock.Now, Observer: obs})
	valid := func() http.Header {
		return http.Header{
			"Connection":            {"keep-alive, Upgrade"},
			"Upgrade":               {"websocket"},
			"Sec-Websocket-Version": {"13"},
			"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
		}
	}
	cases := []struct {
		name   string
		method string
		edit   func(h http.Header)
		status int
	}{
		{"version 8", "GET", func(h http.Header) { h.Set("Sec-Websocket-Version", "8") }, 400},
		{"no version", "GET", func(h http.Header) { h.Del("Sec-Websocket-Version") }, 400},
		{"short key", "GET", func(h http.Header) { h.Set("Sec-Websocket-Key", "c2hvcnQ=") }, 400},
		{"key not base64", "GET", func(h http.Header) { h.Set("Sec-Websocket-Key", "!!!!!!!!!!!!!!!!!!!!!!!!") }, 400},
		{"no key", "GET", func(h http.Header) { h.Del("Sec-Websocket-Key") }, 400},
		{"no upgrade token", "GET", func(h http.Header) { h.Set("Connection", "keep-alive") }, 400},
		{"upgrade h2c", "GET", func(h http.Header) { h.Set("Upgrade", "h2c") }, 400},
		{"POST", "POST", func(http.Header) {}, 405},
	}
	for _, tc := range cases {
		for range 10 { // any one of them, counted, would empty the burst of one
			req, _ := http.NewRequest(tc.method, ts.URL+"/ws", nil)
			req.Header = valid()
			tc.edit(req.Header)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
			}
			if tc.status == 400 && resp.Header.Get("Sec-Websocket-Version") != "13" {
				t.Errorf("%s: Sec-WebSocket-Version %q, want 13", tc.name, resp.Header.Get("Sec-Websocket-Version"))
			}
		}
	}
	if n := obs.n.Load(); n != 0 {
		t.Errorf("%d decisions for malformed handshakes, want 0", n)
	}
	c, _, err := ts.dial(t, nil)
	if err != nil {
		t.Fatalf("valid handshake after malformed ones: %v", err)
	}
	c.Close()
}

func TestCheckHandshakeValid(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://x/ws", nil)
	r.Header = http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"WebSocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {strings.Repeat("A", 22) + "=="},
	}
	if status, err := checkHandshake(r); status != 0 || err != nil {
		t.Fatalf("checkHandshake = %d, %v", status, err)
	}
}
