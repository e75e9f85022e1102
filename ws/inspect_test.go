package ws

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

func TestInspectHandler(t *testing.T) {
	ts := newTestServer(t, capDoc(3)+"reject: {cap_retry_after: 4s}\n", nil)
	var open []*websocket.Conn
	for i := 0; i < 2; i++ {
		c, _, err := ts.dial(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	admin := httptest.NewServer(ts.g.InspectHandler())
	defer admin.Close()
	resp, err := http.Get(admin.URL + "?top=5")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var in Inspection
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	// The policy as a file writes it: durations as strings, defaults and
	// empty sections left out.
	var doc struct {
		Policy map[string]any `json:"policy"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if rj, _ := doc.Policy["reject"].(map[string]any); rj["cap_retry_after"] != "4s" {
		t.Errorf("policy.reject = %v, want cap_retry_after \"4s\"", doc.Policy["reject"])
	}
	if _, ok := doc.Policy["state"]; ok {
		t.Errorf("policy has a state section the file does not set: %v", doc.Policy["state"])
	}
	for _, empty := range []string{"{}", "[]", "null"} {
		if strings.Contains(string(raw), empty) {
			t.Errorf("inspection holds %s:\n%s", empty, raw)
		}
	}
	if len(in.Rules) != 1 {
		t.Fatalf("rules = %+v", in.Rules)
	}
	r := in.Rules[0]
	if r.Name != "per-ip" || r.Key != "ip" || r.Connections != 3 {
		t.Errorf("rule = %+v", r)
	}
	if r.LiveConnections == nil || *r.LiveConnections != 2 || r.TrackedKeys == nil || *r.TrackedKeys != 1 {
		t.Errorf("state = live %v keys %v, want 2 and 1", r.LiveConnections, r.TrackedKeys)
	}
	if len(r.Top) != 1 || r.Top[0].Key != "127.0.0.1" || r.Top[0].Connections != 2 {
		t.Errorf("top = %+v, want 127.0.0.1 with 2", r.Top)
	}
	if doc.Policy["version"] != 1.0 || in.Mode != "enforce" || in.RejectMode != "status" {
		t.Errorf("policy header = %+v", in)
	}
	if bad, _ := http.Get(admin.URL + "?top=-1"); bad == nil || bad.StatusCode != 400 {
		t.Errorf("top=-1 accepted")
	}
}
