// Command minimal is the smallest guarded gorilla/websocket server: the
// program in the README, line for line.
//
//	go run ./examples/minimal [-addr 127.0.0.1:8081]
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/listener"
	"github.com/wslimit/wslimit/ws"
)

const policyYAML = `
version: 1
rules:
  - {name: per-ip, key: ip, connections: 10, rate: 5/s, burst: 10}
  - {name: everyone, key: global, connections: 10000}
listener: {per_ip: 64, global: 20000}   # every TCP connection, before any HTTP
`

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "listen address")
	flag.Parse()

	p, err := policy.Parse([]byte(policyYAML), "policy.yaml") // or policy.LoadFile: errors carry file:line:col
	if err != nil {
		log.Fatal(err)
	}
	g, err := ws.New(p, ws.Options{Upgrader: websocket.Upgrader{}}) // CheckOrigin nil: same origin only
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil) // a refusal is already written: 429 + Retry-After + JSON
		if err != nil {
			return
		}
		defer conn.Close() // releases every slot this connection holds
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			_ = conn.WriteMessage(mt, msg)
		}
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	lim, _ := p.Listener()                                   // the policy's listener section
	capped, err := listener.New(ln, lim, listener.Options{}) // caps every TCP connection at accept
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
	log.Printf("listening on ws://%s/ws", ln.Addr())
	log.Fatal(srv.Serve(capped))
}
