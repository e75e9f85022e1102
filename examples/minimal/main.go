// Command minimal is the smallest guarded gorilla/websocket server: the
// README's snippet as a program.
//
//	go run ./examples/minimal
package main

import (
	"log"
	"net/http"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/ws"
)

func main() {
	// The same policy as YAML would be:
	//   version: 1
	//   rules:
	//     - {name: per-ip, key: ip, connections: 10, rate: 5/s, burst: 10}
	//     - {name: everyone, key: global, connections: 10000}
	p, err := policy.New(policy.Config{
		Version: 1,
		Rules: []policy.RuleConfig{
			{Name: "per-ip", Key: "ip", Connections: 10, Rate: "5/s", Burst: 10},
			{Name: "everyone", Key: "global", Connections: 10000},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	g, err := ws.New(p, ws.Options{Upgrader: websocket.Upgrader{}})
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil) // a refusal is already written (429 + Retry-After)
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
	log.Fatal(http.ListenAndServe("127.0.0.1:8081", nil))
}
