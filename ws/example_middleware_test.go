package ws_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

// ExampleGuard_Admit admits by hand, for a server that can use neither
// Upgrade nor Middleware; here a plain gorilla Upgrader stands in for it.
// The decision's Release belongs to the end of the connection.
func ExampleGuard_Admit() {
	p, err := policy.Parse([]byte("version: 1\nrules:\n  - {name: per-ip, key: ip, connections: 1}\n"), "policy.yaml")
	if err != nil {
		panic(err)
	}
	g, err := ws.New(p, ws.Options{})
	if err != nil {
		panic(err)
	}
	defer g.Close()
	var up websocket.Upgrader
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, ok := g.Admit(w, r)
		if !ok {
			return // the refusal is written (and logged)
		}
		if d.Protocols != nil {
			// Offer the upgrader the token-free protocols only.
			r.Header["Sec-Websocket-Protocol"] = d.Protocols
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			d.Release()
			return
		}
		go func() {
			defer d.Release() // once, when the connection ends
			defer c.Close()
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	first, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		panic(err)
	}
	defer first.Close()
	fmt.Println("first: connected")
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil && resp != nil {
		fmt.Println("second:", resp.Status, "Retry-After", resp.Header.Get("Retry-After"))
	}
	// Output:
	// first: connected
	// second: 429 Too Many Requests Retry-After 1
}
