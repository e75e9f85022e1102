package ws

import (
	"context"
	"net/http"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/messages"
)

// Middleware returns a handler that admits WebSocket handshakes under the
// policy before calling next: the form for servers on other WebSocket
// libraries (coder/websocket, gobwas/ws, ...) and for httputil.ReverseProxy.
//
// Slots belong to the connection, not to the handler. next receives a
// ResponseWriter whose Hijack (by type assertion to http.Hijacker or
// through http.NewResponseController) returns a net.Conn whose Close
// releases the slots, exactly once; the runtime cleanup of Guard.Upgrade
// releases them if that connection becomes unreachable unclosed. So a
// handler may return at once, hand the connection to goroutines or never
// return: the slots are held until the connection closes. A handler that
// never hijacks (a refused origin, a failed upgrade) releases them when it
// returns. A handler that panics after hijacking has its connection closed,
// as net/http closes the connection of a handler that panics before.
//
// Requests that are not WebSocket handshakes (websocket.IsWebSocketUpgrade
// false) go to next uncounted. The request passed to next carries the
// decision's token-free Sec-WebSocket-Protocol offer, so that the library
// can never select a bearer token and echo it back.
//
// Refusals follow reject.mode as far as a middleware can: a status (429,
// 401, 503, or Options.Reject), or in close mode (auto mode with Origin)
// an upgrade completed by the Guard's gorilla Upgrader and closed at once
// with 1013 or 1008 and a reason, on the same bounded close path as
// Upgrade. next never sees a refused request, so what it would have chosen
// does not apply to the refused connection: its subprotocol and extension
// negotiation (the close frame needs neither), its origin check (the
// Guard's Upgrader.CheckOrigin decides; a refusal from an origin it
// refuses is answered with the status). Set Options.Upgrader.CheckOrigin
// to the library's origin policy.
func (g *Guard) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			// Only a handshake can become a WebSocket holding a slot;
			// plain requests are the listener guard's business.
			next.ServeHTTP(w, r)
			return
		}
		d, ok := g.Admit(w, r)
		if !ok {
			return
		}
		r = withProtocols(r, d.Protocols)
		m := g.Meter(d)
		if !d.Holds() && m == nil {
			next.ServeHTTP(w, r)
			return
		}
		if m != nil {
			r = r.WithContext(context.WithValue(r.Context(), meterKey{}, m))
		}
		serveHolding(next, w, r, d, m)
	})
}

// serveHolding calls next with a ResponseWriter that ties d's release to
// the hijacked connection (the hijackWriter and releasingConn Upgrade
// uses), or to the handler's return when next does not hijack.
func serveHolding(next http.Handler, w http.ResponseWriter, r *http.Request, d *policy.Decision, m *messages.Meter) {
	// The releasingConn is an allocation of its own, not part of the
	// writer: the connection must not keep the response and request
	// reachable for its lifetime, nor delay its runtime cleanup.
	mw := &middlewareWriter{hijackWriter{ResponseWriter: w, nc: &releasingConn{d: d, m: m}}}
	defer func() {
		hijacked := mw.nc.Conn != nil
		if p := recover(); p != nil {
			if hijacked {
				_ = mw.nc.Close()
			}
			mw.nc.release()
			panic(p)
		}
		if !hijacked {
			mw.nc.release()
		}
	}()
	next.ServeHTTP(mw, r)
}

// middlewareWriter is the hijackWriter plus Flush, for handlers that
// type-assert http.Flusher on the writer they are given (net/http's own
// writer has it; http.NewResponseController reaches it through Unwrap
// anyway).
type middlewareWriter struct {
	hijackWriter
}

// Flush flushes the underlying writer when it can.
func (mw *middlewareWriter) Flush() {
	_ = http.NewResponseController(mw.ResponseWriter).Flush()
}

// Admit evaluates the policy for r, for code that can use neither Upgrade
// nor Middleware (a library that does not hijack through the
// ResponseWriter, a custom transport). It counts whatever request it is
// given. When refused, it logs the refusal, writes it as Middleware does
// (a status, or in close and auto mode a close frame after an upgrade) and
// returns the decision and false: w must not be written again. When
// admitted it returns the decision and true; the caller calls
// d.Release when the connection ends, on every path including a failed
// upgrade (Release is idempotent: later calls do nothing), and upgrades
// with d.Protocols as the Sec-WebSocket-Protocol offer when it is not nil.
func (g *Guard) Admit(w http.ResponseWriter, r *http.Request) (*policy.Decision, bool) {
	if g.refuseShutdown(w) {
		return shutdownDecision(), false
	}
	d := g.lim.Admit(r.Context(), r)
	if !d.Allowed {
		g.logReject(r, d)
		g.writeRefusal(w, withProtocols(r, d.Protocols), d)
		return d, false
	}
	if d.WouldReject {
		g.logReject(r, d)
	}
	return d, true
}

// writeRefusal answers a refusal from Admit. Unlike Upgrade's callers, the
// request may not be a handshake and its origin is unchecked: only a
// handshake whose origin the Upgrader accepts may take the close path,
// since completing it is an upgrade the application would otherwise have
// refused.
func (g *Guard) writeRefusal(w http.ResponseWriter, r *http.Request, d *policy.Decision) {
	if websocket.IsWebSocketUpgrade(r) && g.checkOrigin(r) {
		g.writeReject(w, r, d, nil)
		return
	}
	g.writeStatus(w, r, d, d.Policy().Reject())
}
