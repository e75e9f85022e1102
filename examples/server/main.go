// Command server is a guarded WebSocket echo server with a demo page.
//
//	go run ./examples/server [-addr 127.0.0.1:8080] [-policy policy.yaml]
//
// It serves the demo page on / and a WebSocket echo endpoint on /ws,
// guarded by wslimit with the embedded default policy (policy.yaml beside
// this file) or the one given with -policy, and logs every rejection.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/redisstore"
	"github.com/wslimit/wslimit/ws"
)

//go:embed policy.yaml
var defaultPolicy []byte

//go:embed index.html
var indexHTML []byte

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	policyFile := flag.String("policy", "", "policy file (default: the embedded policy.yaml)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, *policyFile, log); err != nil {
		log.Error("server failed", "error", err)
		os.Exit(1)
	}
}

func loadPolicy(file string) (*policy.Policy, error) {
	if file == "" {
		return policy.Parse(defaultPolicy, "policy.yaml (embedded)")
	}
	return policy.LoadFile(file)
}

func run(addr, policyFile string, log *slog.Logger) error {
	p, err := loadPolicy(policyFile)
	if err != nil {
		return err
	}
	store, err := newStore(p, log)
	if err != nil {
		return err
	}
	defer store.Close()
	g, err := ws.New(p, ws.Options{
		Store:    store,
		Logger:   log,
		Upgrader: websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024},
	})
	if err != nil {
		return err
	}
	defer g.Close()

	srv := &http.Server{Addr: addr, Handler: newMux(g), ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("wslimit demo listening", "url", fmt.Sprintf("http://%s/", addr), "rules", len(p.Rules()))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newStore returns the store the policy asks for: in memory, or Redis with
// an in-memory fallback for on_error: local.
func newStore(p *policy.Policy, log *slog.Logger) (policy.Store, error) {
	cfg := p.Config().State
	if cfg.Store != "redis" {
		return policy.NewMemoryStore(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := redisstore.FromConfig(ctx, cfg.Redis, policy.NewMemoryStore(), log)
	if err != nil {
		return nil, err
	}
	log.Info("wslimit state in redis", "addrs", cfg.Redis.Addrs, "prefix", cfg.Redis.Prefix)
	return st, nil
}

// newMux serves the demo page on / and the guarded echo endpoint on /ws.
func newMux(g *ws.Guard) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := g.Upgrade(w, r, nil)
		if err != nil {
			return // the rejection or upgrade error is already written
		}
		defer conn.Close() // releases every slot this connection holds
		conn.SetReadLimit(64 << 10)
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})

	return mux
}
