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
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/listener"
	"github.com/wslimit/wslimit/policy/penalty"
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
		// A policy file's problems are joined: one line each, not one
		// line with literal \n.
		problems := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = j.Unwrap()
		}
		for _, e := range problems {
			log.Error("server failed", "error", e)
		}
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
	// The pressure monitor samples once per interval on a goroutine of its
	// own; the guard's limiter gives it the pressure section of every
	// policy it takes (none: it samples nothing). Its connections signal is
	// the TCP connections the listener holds (WebSockets and keep-alive).
	var capped *listener.Listener // set once listening
	mon := pressure.New(nil, pressure.Options{Logger: log, Connections: func() int {
		if capped == nil {
			return 0
		}
		return capped.Stats().Live
	}})
	g, reg, err := newGuard(p, store, mon, log)
	if err != nil {
		return err
	}
	defer g.Close()

	// Listen before serving so that a busy port fails the start, and the
	// log line names the real address (":0" picks a free port).
	servers := []*http.Server{newServer(newMux(g, reg))}
	lns := make([]net.Listener, 0, 2)
	ln, err := listen(addr, p, reg, log)
	if err != nil {
		return err
	}
	lns = append(lns, ln)
	capped, _ = ln.(*listener.Listener) // before mon.Run starts: no race
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
	go func() { _ = g.Penalties().Run(ctx) }() // shares bans through Redis, if the store is
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
	// The guard first: handshakes get 503 from now on, every slot goes
	// back in one batched call (the other instances can use the capacity
	// at once), and the WebSockets are told to reconnect elsewhere (1001
	// Going Away). Then the HTTP servers stop.
	if err := g.Shutdown(shutdown); err != nil {
		log.Warn("guard shutdown", "error", err)
	}
	for _, srv := range servers {
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) && serveErr == nil {
			serveErr = err
		}
	}
	log.Info("wslimit demo stopped")
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
	// Bans of the policy's penalties; with Redis, shared by every instance.
	popts := penalty.Options{Logger: log}
	if rs, ok := store.(*redisstore.Store); ok {
		popts.Shared = rs.Bans()
	}
	pen := penalty.New(popts)
	reg.MustRegister(prom.NewPenaltyCollector(pen, prom.Options{}))
	if mon != nil {
		reg.MustRegister(prom.NewPressureCollector(mon, prom.Options{}))
	}
	g, err := ws.New(p, ws.Options{
		Penalties: pen,
		Store:     store,
		Logger:    log,
		Observer:  obs,
		Upgrader:  websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024},

		Keepalive: ws.Keepalive{PingInterval: 20 * time.Second, PongWait: 30 * time.Second, WriteTimeout: 10 * time.Second},
		Pressure:  mon,
	})
	if err != nil {
		return nil, nil, err
	}
	reg.MustRegister(prom.NewMessagesCollector(g.Messages(), prom.Options{})) // messages limits (issue 19)
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
// the page's aggregate counters on /stats (with the refusals counted in
// reg's metrics).
func newMux(g *ws.Guard, reg *prometheus.Registry) *http.ServeMux {
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
		defer conn.Close()         // releases every slot this connection holds
		conn.SetReadLimit(1 << 20) // a backstop: the policy's messages.max_size refuses first, with a reason
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
		st := publicStats(g)
		addRefusals(&st, reg)
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}

// newAdminMux serves the admin endpoints: /metrics (reg), /inspect and
// /bans/ (list, POST /bans/ban, POST /bans/unban: penalty.Engine.Handler).
// They list client addresses and user ids, and /bans/ bans anyone: serve
// them only on a private address.
func newAdminMux(g *ws.Guard, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /inspect", g.InspectHandler())
	mux.Handle("/bans/", http.StripPrefix("/bans", g.Penalties().Handler()))
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
	// Refused counts the handshakes this rule refused since the server
	// started, by reason (connections, rate, ...); absent while none.
	Refused map[string]uint64 `json:"refused,omitempty"`
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

// addRefusals fills in each rule's refusals by reason from the server's own
// metrics (wslimit_rejections_total), so that the page shows what the
// server refused, from any client, beside what this tab saw.
func addRefusals(s *Stats, reg *prometheus.Registry) {
	if reg == nil {
		return
	}
	mfs, err := reg.Gather()
	if err != nil {
		return
	}
	for _, mf := range mfs {
		if mf.GetName() != "wslimit_rejections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var rule, reason string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "rule":
					rule = l.GetValue()
				case "reason":
					reason = l.GetValue()
				}
			}
			for i := range s.Rules {
				if r := &s.Rules[i]; r.Name == rule && m.GetCounter().GetValue() > 0 {
					if r.Refused == nil {
						r.Refused = map[string]uint64{}
					}
					r.Refused[reason] = uint64(m.GetCounter().GetValue())
				}
			}
		}
	}
}
