package ws_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

// ExampleMeterFrom meters a coder/websocket server behind Middleware: the
// handler charges every message it reads to the connection's meter and
// acts on the Result (wait: read nothing meanwhile; a code: close). Here
// the third message in a row exceeds the close limit's burst of 2.
func ExampleMeterFrom() {
	const doc = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 10}
messages:
  max_size: 1024
  action: close
  limits:
    - {name: conn, rate: 1/m, burst: 2}
`
	p, err := policy.Parse([]byte(doc), "policy.yaml")
	if err != nil {
		panic(err)
	}
	g, err := ws.New(p, ws.Options{})
	if err != nil {
		panic(err)
	}
	defer g.Close()
	handler := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := ws.MeterFrom(r.Context())
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(int64(m.MaxSize()) + 1) // larger messages: Message says 1009
		for {
			_, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			res := m.Message(len(msg))
			if res.Code != 0 {
				c.Close(websocket.StatusCode(res.Code), res.Reason)
				return
			}
			if res.Wait > 0 {
				select {
				case <-time.After(res.Wait):
				case <-m.Done():
					return
				}
			}
			_ = c.Write(r.Context(), websocket.MessageText, msg)
		}
	}))
	srv := httptest.NewServer(handler)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	for i := 1; i <= 3; i++ {
		if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
			panic(err)
		}
		_, msg, err := c.Read(ctx)
		if err != nil {
			fmt.Printf("message %d: closed %d %q\n", i, websocket.CloseStatus(err), closeReason(err))
			break
		}
		fmt.Printf("message %d: echoed %s\n", i, msg)
	}
	// Output:
	// message 1: echoed hello
	// message 2: echoed hello
	// message 3: closed 1008 "conn: messages over 1/m burst 2"
}

func closeReason(err error) string {
	var ce websocket.CloseError
	errors.As(err, &ce)
	return ce.Reason
}
