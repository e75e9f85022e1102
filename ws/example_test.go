package ws_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

// ExampleNew guards a gorilla/websocket echo handler with a cap of one
// connection per address: the second handshake from the same address is
// refused with 429, Retry-After and a JSON body before any upgrade.
func ExampleNew() {
	p, err := policy.Parse([]byte(`
version: 1
rules:
  - {name: per-ip, key: ip, connections: 1}
`), "policy.yaml")
	if err != nil {
		panic(err)
	}
	g, err := ws.New(p, ws.Options{Upgrader: websocket.Upgrader{}})
	if err != nil {
		panic(err)
	}
	defer g.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil) // a refusal is already written
		if err != nil {
			return
		}
		defer conn.Close() // releases the connection's slots
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			_ = conn.WriteMessage(mt, msg)
		}
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	first, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		panic(err)
	}
	_ = first.WriteMessage(websocket.TextMessage, []byte("hello"))
	_, echo, _ := first.ReadMessage()
	fmt.Printf("first: echo %q\n", echo)

	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil && resp != nil {
		body, _ := io.ReadAll(resp.Body)
		fmt.Println("second:", resp.Status, "Retry-After:", resp.Header.Get("Retry-After"))
		fmt.Print("body: ", string(body))
	}
	first.Close()
	// Output:
	// first: echo "hello"
	// second: 429 Too Many Requests Retry-After: 1
	// body: {"error":"Too Many Requests","rule":"per-ip","reason":"connections","retry_after":1}
}

// ExampleGuard_Middleware guards a handler that is not gorilla's (another
// WebSocket library, or httputil.ReverseProxy). Requests that are not
// WebSocket handshakes pass uncounted; a refused handshake never reaches
// the handler.
func ExampleGuard_Middleware() {
	p, err := policy.Parse([]byte(`
version: 1
rules:
  - {name: per-ip, key: ip, rate: 1/m, burst: 1}
`), "policy.yaml")
	if err != nil {
		panic(err)
	}
	g, err := ws.New(p, ws.Options{})
	if err != nil {
		panic(err)
	}
	defer g.Close()
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A WebSocket library would hijack the connection here; its
		// slots are released when that connection closes.
		fmt.Fprintln(w, "handler reached")
	})
	srv := httptest.NewServer(g.Middleware(app))
	defer srv.Close()

	handshake := func() string {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		for k, v := range map[string]string{
			"Connection": "Upgrade", "Upgrade": "websocket",
			"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
		} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			// The body names the rule and the reason; retry_after is
			// the bucket's real refill time, here about a minute.
			var refusal struct{ Rule, Reason string }
			_ = json.NewDecoder(resp.Body).Decode(&refusal)
			return fmt.Sprintf("%s: rule %s, reason %s", resp.Status, refusal.Rule, refusal.Reason)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.Status + ": " + strings.TrimSpace(string(body))
	}
	plain, err := http.Get(srv.URL)
	if err != nil {
		panic(err)
	}
	plain.Body.Close()
	fmt.Println("plain request:", plain.Status)
	fmt.Println("handshake 1:", handshake())
	fmt.Println("handshake 2:", handshake())
	// Output:
	// plain request: 200 OK
	// handshake 1: 200 OK: handler reached
	// handshake 2: 429 Too Many Requests: rule per-ip, reason rate
}
