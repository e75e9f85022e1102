package ws

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gorilla/websocket"
)

func TestInspectHandler(t *testing.T) {
	ts := newTestServer(t, capDoc(3), nil)
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
	defer resp.Body.Close()
	var in Inspection
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		t.Fatal(err)
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
	if in.Policy.Version != 1 || in.Mode != "enforce" || in.RejectMode != "status" {
		t.Errorf("policy header = %+v", in)
	}
	if bad, _ := http.Get(admin.URL + "?top=-1"); bad == nil || bad.StatusCode != 400 {
		t.Errorf("top=-1 accepted")
	}
}
