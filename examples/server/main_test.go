package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

// TestDemoServer runs the demo's handler with the embedded policy over
// loopback: the page is served, /ws echoes, and the sixth connection from
// one address gets 429 without Origin and, with Origin (a browser), is
// closed with 1013 and a reason (reject.mode: auto). /stats shows
// aggregate counts and no address; /inspect is on the admin mux only.
func TestDemoServer(t *testing.T) {
	p, err := loadPolicy("")
	if err != nil {
		t.Fatalf("embedded policy: %v", err)
	}
	store := policy.NewMemoryStore()
	defer store.Close()
	g, reg, err := newGuard(p, store, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newMux(g, reg))
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
		_ = c.SetReadDeadline(time.Now().Add(slack))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
			t.Fatalf("echo %d: %q %v", i+1, msg, err)
		}
	}
	// A client without Origin (not a browser) gets 429 before the upgrade.
	_, resp, err = websocket.DefaultDialer.Dial(u, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("sixth connection without Origin: %v %v, want 429 with Retry-After", err, resp)
	}
	if got := resp.Header.Get("RateLimit-Policy"); got != `"per-ip";q=5` {
		t.Errorf("RateLimit-Policy %q", got)
	}
	// A browser (it sends Origin) is upgraded and closed with 1013 and a
	// reason it can read (reject.mode: auto).
	c, _, err := websocket.DefaultDialer.Dial(u, http.Header{"Origin": {srv.URL}})
	if err != nil {
		t.Fatalf("sixth connection with Origin should be upgraded then closed: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(slack))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseTryAgainLater || !strings.HasPrefix(ce.Text, "per-ip: connections") {
		t.Fatalf("sixth connection: %v, want close 1013 per-ip: connections", err)
	}

	// /stats has aggregate numbers only: five live connections per rule,
	// one tracked address, and no address anywhere in the body.
	st, body := getStats(t, srv.URL)
	if len(st.Rules) != 3 {
		t.Fatalf("stats rules: %+v", st.Rules)
	}
	for _, r := range st.Rules {
		if r.Live != 5 || r.TrackedKeys != 1 {
			t.Errorf("stats rule %s: live %d tracked %d, want 5 and 1", r.Name, r.Live, r.TrackedKeys)
		}
	}
	if st.RejectMode != "auto" || st.Rules[0].Name != "per-ip" || st.Rules[0].Connections != 5 {
		t.Errorf("stats: %+v", st)
	}
	// The server's refusals by rule and reason: the 429 and the 1013.
	if got := st.Rules[0].Refused; len(got) != 1 || got["connections"] != 2 {
		t.Errorf("stats per-ip refused = %v, want connections: 2", got)
	}
	if got := st.Rules[1].Refused; got != nil {
		t.Errorf("stats per-subnet refused = %v, want none", got)
	}
	if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "top_keys") {
		t.Errorf("stats leak keys: %s", body)
	}

	// The admin mux, on its own listener in the real server, lists keys.
	adm := httptest.NewServer(newAdminMux(g, reg))
	defer adm.Close()
	resp, err = http.Get(adm.URL + "/inspect")
	if err != nil {
		t.Fatal(err)
	}
	var in ws.Inspection
	err = json.NewDecoder(resp.Body).Decode(&in)
	resp.Body.Close()
	if err != nil || len(in.Rules) != 3 || len(in.Rules[0].Top) != 1 || in.Rules[0].Top[0].Connections != 5 {
		t.Fatalf("inspect: %v %+v", err, in.Rules)
	}
	// /metrics counts the scripted sequence exactly: five admissions, two
	// refusals by per-ip (one 429, one close), five live connections.
	metrics := get(t, adm.URL+"/metrics")
	for _, want := range []string{
		`wslimit_decisions_total{result="admitted"} 5`,
		`wslimit_decisions_total{result="rejected"} 2`,
		`wslimit_rejections_total{reason="connections",rule="per-ip"} 2`,
		`wslimit_admissions_total{rule="per-ip"} 5`,
		`wslimit_live_connections{rule="per-ip"} 5`,
		`wslimit_live_connections{rule="everyone"} 5`,
		`wslimit_tracked_keys{rule="per-ip"} 1`,
		`wslimit_decision_seconds_count 7`,
	} {
		if !strings.Contains(metrics, "\n"+want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(metrics, "127.0.0.1") {
		t.Errorf("/metrics has an address as a label")
	}
	// ... and the public mux serves neither.
	for _, path := range []string{"/inspect", "/metrics"} {
		if resp, err := http.Get(srv.URL + path); err != nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("public %s: %v %v", path, err, resp)
		} else {
			resp.Body.Close()
		}
	}

	// Closing the clients releases their slots.
	for _, c := range open {
		c.Close()
	}
	open = nil
	deadline := time.Now().Add(slack)
	for {
		st, _ := getStats(t, srv.URL)
		if st.Rules[0].Live == 0 && st.Rules[0].TrackedKeys == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots not released: %+v", st.Rules)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slack bounds the waits of these tests whose subject is not a timeout (a
// read that must succeed, a release polled until it shows, a process or a
// browser starting): CI runs every package's tests at once, with -race, on
// 2 cores, and a stall of seconds must make a test slower, never fail it.
// A wait returns as soon as its condition holds.
const slack = 20 * time.Second

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

func getStats(t *testing.T, base string) (Stats, string) {
	t.Helper()
	resp, err := http.Get(base + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/stats: %d %v", resp.StatusCode, err)
	}
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/stats: %v: %s", err, body)
	}
	return st, string(body)
}
