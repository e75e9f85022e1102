// Package ws guards gorilla/websocket handshakes with a wslimit policy.
//
// # Overview
//
// A Guard wraps a websocket.Upgrader. Guard.Upgrade evaluates the policy
// before the upgrade; when every rule admits the handshake it upgrades and
// returns a *Conn that holds the connection's slots. A refused handshake is
// answered with HTTP 429 (401 for a required but missing identity, 503 when
// the store fails), a Retry-After header in whole seconds rounded up from
// the bucket's real refill time, and a small JSON body naming the rule and
// the reason. With reject.mode close the handshake is instead accepted and
// closed at once with 1013 (Try Again Later) or 1008 (Policy Violation) and
// a reason, which browsers can read; such a connection never takes a slot,
// and the number being closed at once is bounded (reject.max_closing and
// reject.max_closing_per_ip).
//
// Guard.Middleware is the same admission for any http.Handler (other
// WebSocket libraries, httputil.ReverseProxy). Its slots belong to the
// connection too: the handler's ResponseWriter hijacks a net.Conn whose
// Close releases them, so a handler may return at once or hand the
// connection to goroutines; only a handler that never hijacks releases on
// return. Requests that are not handshakes pass uncounted. Guard.Admit is
// the admission alone, for code that can use neither: the caller releases.
//
// # Release
//
// Every admitted slot is released exactly once: when the connection is
// closed by any path (Conn.Close, the embedded websocket.Conn's Close, the
// network connection's Close, which gorilla also calls on a failed upgrade),
// and, as a last resort, when an unclosed connection becomes unreachable
// (a runtime cleanup). Release does not belong in the HTTP handler's defer:
// gorilla applications often hand the connection to goroutines and return.
//
// The network connection gorilla holds (Conn.NetConn, UnderlyingConn) is a
// wrapper whose Close releases the slots. Code that needs the concrete type
// unwraps it:
//
//	raw := c.NetConn().(interface{ Unwrap() net.Conn }).Unwrap()
//
// # Origin Considerations
//
// The Upgrader's CheckOrigin runs before the policy is evaluated: requests
// that are not WebSocket handshakes, or whose origin is refused, are
// answered by the Upgrader and never counted.
//
// # Concurrency
//
// Guard.Shutdown is the graceful stop: handshakes get 503 from then on,
// the store's Shutdown (the Redis store has one) gives every slot back in
// one batched call, and every live WebSocket of the guard gets a close
// frame with 1001 Going Away.
//
// A Guard is safe for concurrent use. A Conn follows gorilla's rules: one
// concurrent reader and one concurrent writer; Close may be called from any
// goroutine, any number of times.
package ws
