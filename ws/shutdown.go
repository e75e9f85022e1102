package ws

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// ErrShutdown is returned by Upgrade once Shutdown has begun: the
// handshake was answered with 503 and took nothing.
var ErrShutdown = errors.New("ws: guard is shutting down")

// shutdownCloseWait bounds the close frame written to each connection at
// shutdown when ctx allows longer: a peer that does not read must not hold
// the shutdown.
const shutdownCloseWait = time.Second

// Shutdown stops the guard for a graceful stop of the server:
//
//   - from the start of the call, Upgrade and Admit (and so Middleware)
//     answer every handshake with 503, Retry-After: 1 and the reason
//     "shutting_down", before any rule is evaluated;
//   - when the store has a Shutdown(context.Context) error method (the
//     Redis store does), it is called: every slot of every connection is
//     given back in one batched call, so that other instances can use the
//     capacity at once, and the store stops admitting;
//   - every live WebSocket upgraded by this guard gets a close frame with
//     1001 Going Away (written within a second, or ctx's deadline if
//     sooner) and is closed, which releases what the store still holds for
//     it.
//
// Everything is bounded by ctx. It returns the store's Shutdown error, or
// ctx's error when ctx ended before every connection was closed. Close is still
// needed afterwards (it waits for close-mode refusals and closes a store
// the guard created). Connections served through Middleware or Admit are
// not WebSockets of the guard's: their slots are freed by the store's
// Shutdown, and the handler closes them.
func (g *Guard) Shutdown(ctx context.Context) error {
	conns := g.live.shut()
	var err error
	if s, ok := g.store.(interface{ Shutdown(context.Context) error }); ok {
		err = s.Shutdown(ctx)
	}
	wait := time.Now().Add(shutdownCloseWait)
	if d, ok := ctx.Deadline(); ok && d.Before(wait) {
		wait = d
	}
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down")
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			_ = c.WriteControl(websocket.CloseMessage, msg, wait)
			_ = c.Close()
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// refuseShutdown answers a handshake with 503 when Shutdown has begun and
// reports whether it did.
func (g *Guard) refuseShutdown(w http.ResponseWriter) bool {
	if !g.live.isShut() {
		return false
	}
	hdr := w.Header()
	hdr.Set("Retry-After", "1")
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Connection", "close")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(rejectBody{Error: http.StatusText(http.StatusServiceUnavailable), Reason: "shutting_down", RetryAfter: 1})
	return true
}

// shutdownDecision is what Admit returns when Shutdown has begun: refused,
// holding nothing.
func shutdownDecision() *policy.Decision { return &policy.Decision{} }

// liveSet is the guard's set of upgraded connections, for Shutdown. It
// holds them weakly, so that a connection the application drops without
// closing stays collectable (its runtime cleanup releases its slots), and
// sweeps collected entries whenever the set has doubled since the last
// sweep, so that it stays within twice the connections still reachable.
type liveSet struct {
	down    atomic.Bool // read on every handshake
	mu      sync.Mutex
	m       map[weak.Pointer[Conn]]struct{}
	sweepAt int
}

// add records c, and reports false (c not recorded) when Shutdown has
// begun: the caller closes c then.
func (l *liveSet) add(c *Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down.Load() {
		return false
	}
	if l.m == nil {
		l.m = map[weak.Pointer[Conn]]struct{}{}
	}
	if len(l.m) >= l.sweepAt {
		for p := range l.m {
			if p.Value() == nil {
				delete(l.m, p)
			}
		}
		l.sweepAt = max(2*len(l.m), 64)
	}
	l.m[weak.Make(c)] = struct{}{}
	return true
}

func (l *liveSet) isShut() bool { return l.down.Load() }

// shut stops the set taking connections and returns (and forgets) those
// still reachable.
func (l *liveSet) shut() []*Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down.Store(true)
	conns := make([]*Conn, 0, len(l.m))
	for p := range l.m {
		if c := p.Value(); c != nil {
			conns = append(conns, c)
		}
	}
	clear(l.m)
	return conns
}

// track records an upgraded connection for Shutdown, or, when Shutdown has
// begun since its admission, closes it with 1001 at once.
func (g *Guard) track(c *Conn) {
	if g.live.add(c) {
		return
	}
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down")
	_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(shutdownCloseWait))
	_ = c.Close()
}
