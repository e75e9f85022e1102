// Command server is a guarded WebSocket echo server with a demo page.
//
//	go run ./examples/server [-addr 127.0.0.1:8080] [-admin 127.0.0.1:8090] [-policy policy.yaml]
//
// It serves the demo page on /, a WebSocket echo endpoint on /ws guarded by
// wslimit with the embedded default policy (policy.yaml beside this file)
// or the one given with -policy, and aggregate per-rule counters on /stats
// for the page. It logs every rejection. With -admin it also serves, on a
// separate listener, Prometheus metrics on /metrics and the inspection
// handler on /inspect (live policy, per rule tracked keys, live connections
// and top keys: addresses, so never on the public listener).
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/listener"
	"github.com/wslimit/wslimit/policy/pressure"
	"github.com/wslimit/wslimit/policy/prom"
	"github.com/wslimit/wslimit/policy/redisstore"
	"github.com/wslimit/wslimit/policy/reload"
	"github.com/wslimit/wslimit/ws"
)

//go:embed policy.yaml
var defaultPolicy []byte

//go:embed index.html
var indexHTML []byte

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	admin := flag.String("admin", "", "admin listen address for /metrics and /inspect, e.g. 127.0.0.1:8090 (default: off)")
	policyFile := flag.String("policy", "", "policy file (default: the embedded policy.yaml)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, *admin, *policyFile, log); err != nil {
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

func run(addr, adminAddr, policyFile string, log *slog.Logger) error {
	p, err := loadPolicy(policyFile)
	if err != nil {
		return err
	}
	store, err := newStore(p, log)
	if err != nil {
		return err
	}
	defer store.Close()
	live := &liveConns{m: map[*ws.Conn]struct{}{}}
	// The pressure monitor samples once per interval on a goroutine of its
	// own; the guard's limiter gives it the pressure section of every
	// policy it takes (none: it samples nothing).
	mon := pressure.New(nil, pressure.Options{Logger: log, Connections: live.count})
	g, reg, err := newGuard(p, store, mon, log)
	if err != nil {
		return err
	}
	defer g.Close()

	// Listen before serving so that a busy port fails the start, and the
	// log line names the real address (":0" picks a free port).
	servers := []*http.Server{newServer(newLiveMux(g, live))}
	lns := make([]net.Listener, 0, 2)
	ln, err := listen(addr, p, reg, log)
	if err != nil {
		return err
	}
	lns = append(lns, ln)
	if adminAddr != "" {
		aln, err := net.Listen("tcp", adminAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		lns = append(lns, aln)
		servers = append(servers, newServer(newAdminMux(g, reg)))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go mon.Run(ctx)
	if policyFile != "" {
		// Hot reload: on file change or SIGHUP; a bad file is logged with
		// file:line:col and the running policy stays.
		apply := func(np *policy.Policy) {
			g.SetPolicy(np)
			if capped, ok := ln.(*listener.Listener); ok {
				lim, _ := np.Listener() // no section any more: no caps
				capped.SetLimits(lim)
			}
		}
		w, err := reload.Watch(ctx, policyFile, apply, reload.Options{Logger: log, SIGHUP: true})
		if err != nil {
			return err
		}
		defer w.Close()
	}
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { errc <- srv.Serve(lns[i]) }()
	}
	log.Info("wslimit demo listening", "url", fmt.Sprintf("http://%s/", lns[0].Addr()), "rules", len(p.Rules()))
	if len(lns) > 1 {
		log.Info("wslimit admin listening", "metrics", fmt.Sprintf("http://%s/metrics", lns[1].Addr()),
			"inspect", fmt.Sprintf("http://%s/inspect", lns[1].Addr()))
	}
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) && serveErr == nil {
			serveErr = err
		}
	}
	release(shutdown, store, live, log)
	return serveErr
}

// newServer returns an http.Server with every timeout a public server
// needs: a client that sends its headers slowly, or goes idle between
// requests, loses its connection instead of holding a descriptor forever.
// (WebSockets are hijacked: these do not apply to them once upgraded.)
func newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// listen opens the public listener, wrapped in the policy's listener caps
// when it has any (every TCP connection counts there, WebSocket or not),
// with their counters in reg.
func listen(addr string, p *policy.Policy, reg *prometheus.Registry, log *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	lim, ok := p.Listener()
	if err != nil || !ok {
		return ln, err
	}
	capped, err := listener.New(ln, lim, listener.Options{})
	if err != nil {
		ln.Close()
		return nil, err
	}
	reg.MustRegister(prom.NewListenerCollector(capped, prom.Options{}))
	log.Info("wslimit listener caps", "per_ip", lim.PerIP, "per_subnet", lim.PerSubnet, "global", lim.Global, "rate_per_second", float64(lim.Rate))
	return capped, nil
}

// release runs once no handshake comes in any more: it gives every slot
// back at once, so that the other instances can use the capacity, then
// tells the clients to reconnect elsewhere (1001 Going Away); their
// releases find nothing left.
func release(ctx context.Context, store policy.Store, live *liveConns, log *slog.Logger) {
	if rs, ok := store.(*redisstore.Store); ok {
		if err := rs.Shutdown(ctx); err != nil {
			log.Warn("releasing slots at shutdown", "error", err)
		}
	}
	n := live.closeAll("server shutting down")
	log.Info("wslimit demo stopped", "closed_connections", n)
}

// liveConns is the demo's set of open WebSockets, closed with 1001 Going
// Away at shutdown.
type liveConns struct {
	mu sync.Mutex
	m  map[*ws.Conn]struct{}
}

func (l *liveConns) add(c *ws.Conn) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.m[c] = struct{}{}
	l.mu.Unlock()
}

// count returns the number of open WebSockets (the pressure monitor's
// connections signal).
func (l *liveConns) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

func (l *liveConns) remove(c *ws.Conn) {
	if l == nil {
		return
	}
	l.mu.Lock()
	delete(l.m, c)
	l.mu.Unlock()
}

// closeAll sends every connection a close frame with 1001 and closes it;
// it returns how many it closed.
func (l *liveConns) closeAll(reason string) int {
	l.mu.Lock()
	conns := make([]*ws.Conn, 0, len(l.m))
	for c := range l.m {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, reason)
	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.Close()
	}
	return len(conns)
}

// newGuard returns the demo's guard, with a Prometheus observer registered
// in a registry of its own (with the Go and process collectors) for the
// admin listener's /metrics.
func newGuard(p *policy.Policy, store policy.Store, mon *pressure.Monitor, log *slog.Logger) (*ws.Guard, *prometheus.Registry, error) {
	var opts prom.Options
	if ms, ok := store.(*policy.MemoryStore); ok {
		opts.Store = ms // tracked keys, buckets, evictions per rule
	}
	if rs, ok := store.(*redisstore.Store); ok {
		// Health only: the Redis store's per-rule figures come from SCAN,
		// for /inspect, not for every scrape.
		opts.Health = rs.Health
		opts.StoreErrors = func() uint64 { return rs.Snapshot().Errors }
	}
	obs := prom.New(opts)
	reg := prometheus.NewRegistry()
	if err := reg.Register(obs); err != nil {
		return nil, nil, err
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if mon != nil {
		reg.MustRegister(prom.NewPressureCollector(mon, prom.Options{}))
	}
	g, err := ws.New(p, ws.Options{
		Store:    store,
		Logger:   log,
		Observer: obs,
		Upgrader: websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024},

		Keepalive: ws.Keepalive{PingInterval: 20 * time.Second, PongWait: 30 * time.Second, WriteTimeout: 10 * time.Second},
		Pressure:  mon,
	})
	if err != nil {
		return nil, nil, err
	}
	return g, reg, nil
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

// newMux serves the demo page on /, the guarded echo endpoint on /ws and
// the page's aggregate counters on /stats.
func newMux(g *ws.Guard) *http.ServeMux { return newLiveMux(g, nil) }

// newLiveMux is newMux keeping the open WebSockets in live (when not nil)
// for the shutdown.
func newLiveMux(g *ws.Guard, live *liveConns) *http.ServeMux {
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
		live.add(conn)
		defer live.remove(conn)
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
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(publicStats(g))
	})
	return mux
}

// newAdminMux serves the admin endpoints: /metrics (reg) and /inspect.
// The inspection lists client addresses and user ids: serve it only on a
// private address.
func newAdminMux(g *ws.Guard, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /inspect", g.InspectHandler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// Stats is the public /stats document: aggregate numbers only, never a key
// (address, user id, cookie), so that it can be served to anyone.
type Stats struct {
	Mode       string      `json:"mode"`
	RejectMode string      `json:"reject_mode"`
	Closing    int         `json:"closing"`
	Rules      []RuleStats `json:"rules"`
}

// RuleStats is one rule's limits and aggregate state.
type RuleStats struct {
	Name        string  `json:"name"`
	Key         string  `json:"key"` // the kind of key (ip, subnet, ...), not a key
	Connections int     `json:"connections,omitempty"`
	Rate        float64 `json:"rate_per_second,omitempty"`
	Burst       int     `json:"burst,omitempty"`
	Live        int     `json:"live_connections"`
	TrackedKeys int     `json:"tracked_keys"`
}

func publicStats(g *ws.Guard) Stats {
	in := g.Inspect(0)
	s := Stats{Mode: in.Mode, RejectMode: in.RejectMode, Closing: in.Closing, Rules: make([]RuleStats, 0, len(in.Rules))}
	for _, r := range in.Rules {
		rs := RuleStats{Name: r.Name, Key: r.Key, Connections: r.Connections, Rate: r.Rate, Burst: r.Burst}
		if r.LiveConnections != nil {
			rs.Live = *r.LiveConnections
		}
		if r.TrackedKeys != nil {
			rs.TrackedKeys = *r.TrackedKeys
		}
		s.Rules = append(s.Rules, rs)
	}
	return s
}
