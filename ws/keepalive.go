package ws

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Keepalive makes the guard detect dead peers, so that a half-open or
// never-reading client gives its slots back instead of holding them (and
// its socket buffers) forever. The zero value is off; setting any field
// turns it on, and fields left zero take the defaults DefaultPongWait,
// 9/10 of PongWait, and DefaultWriteTimeout.
//
// With keepalive on, the guard pings every PingInterval and closes the
// connection (releasing its slots) when no pong has come for PongWait, or
// when a ping cannot be written within WriteTimeout (the peer stopped
// reading and its buffers are full). The connection's read deadline is
// set to PongWait and extended by each pong, so a reader's ReadMessage
// fails once the peer is silent. Pongs are processed only while the
// application reads (gorilla handles control frames inside its reads): a
// handler that never reads loses its connection after PongWait; run a read
// loop. Set the pong handler through Conn.SetPongHandler (it is chained
// after the guard's); the embedded websocket.Conn's SetPongHandler and
// SetReadDeadline would replace the guard's, and then the watchdog alone
// closes a connection whose peer answers, after PongWait.
//
// Bounds: a silent peer's slots come back within PongWait + PingInterval
// (+ WriteTimeout when the ping itself blocks); a write through Conn's
// WriteMessage, WriteJSON, WritePreparedMessage or NextWriter takes at most
// WriteTimeout, after which the connection is closed. Writes through the
// embedded websocket.Conn are not bounded themselves, but a ping that
// cannot pass them closes the connection within PingInterval +
// WriteTimeout.
type Keepalive struct {
	// PingInterval is the time between pings; less than PongWait.
	PingInterval time.Duration
	// PongWait is how long the peer may stay silent (no pong).
	PongWait time.Duration
	// WriteTimeout bounds each write: pings and Conn's write methods.
	WriteTimeout time.Duration
}

// Keepalive defaults for fields left zero.
const (
	DefaultPongWait     = 60 * time.Second
	DefaultWriteTimeout = 10 * time.Second
)

// on reports whether keepalive is configured.
func (k Keepalive) on() bool { return k != Keepalive{} }

// withDefaults fills in zero fields and checks the intervals.
func (k Keepalive) withDefaults() (Keepalive, error) {
	if k.PingInterval < 0 || k.PongWait < 0 || k.WriteTimeout < 0 {
		return k, errors.New("ws: negative keepalive duration")
	}
	if k.PongWait == 0 {
		k.PongWait = max(DefaultPongWait, k.PingInterval*10/9)
	}
	if k.PingInterval == 0 {
		k.PingInterval = k.PongWait * 9 / 10
	}
	if k.WriteTimeout == 0 {
		k.WriteTimeout = DefaultWriteTimeout
	}
	if k.PingInterval >= k.PongWait {
		return k, errors.New("ws: keepalive PingInterval must be less than PongWait")
	}
	return k, nil
}

// keepalive is one connection's pinger and watchdog: a timer (no goroutine
// while it waits) that pings, and closes the connection when the last pong
// is older than PongWait or a ping cannot be written.
type keepalive struct {
	cfg      Keepalive
	c        *websocket.Conn
	lastPong atomic.Int64                       // unix nanoseconds
	appPong  atomic.Pointer[func(string) error] // the application's pong handler

	mu      sync.Mutex // guards timer and stopped: stop and a tick's Reset must not cross
	timer   *time.Timer
	stopped bool
}

// startKeepalive arms keepalive on c's connection when configured.
func (g *Guard) startKeepalive(c *Conn) {
	if !g.ka.on() {
		return
	}
	k := &keepalive{cfg: g.ka, c: c.Conn}
	c.ka = k
	now := time.Now()
	k.lastPong.Store(now.UnixNano())
	_ = c.Conn.SetReadDeadline(now.Add(k.cfg.PongWait))
	c.Conn.SetPongHandler(k.pong)
	k.mu.Lock()
	k.timer = time.AfterFunc(k.cfg.PingInterval, k.tick)
	k.mu.Unlock()
}

// pong records a pong, extends the read deadline and calls the
// application's handler.
func (k *keepalive) pong(data string) error {
	now := time.Now()
	k.lastPong.Store(now.UnixNano())
	_ = k.c.SetReadDeadline(now.Add(k.cfg.PongWait))
	if h := k.appPong.Load(); h != nil {
		return (*h)(data)
	}
	return nil
}

// tick pings, or closes the connection when the peer has been silent too
// long or the ping cannot be written in time. Closing the network
// connection releases the slots (releasingConn) and fails the
// application's pending reads and writes.
func (k *keepalive) tick() {
	now := time.Now()
	silent := now.Sub(time.Unix(0, k.lastPong.Load())) > k.cfg.PongWait
	if silent || k.c.WriteControl(websocket.PingMessage, nil, now.Add(k.cfg.WriteTimeout)) != nil {
		k.stop()
		_ = k.c.Close()
		return
	}
	k.mu.Lock()
	if !k.stopped {
		k.timer.Reset(k.cfg.PingInterval)
	}
	k.mu.Unlock()
}

// stop ends the pings; safe to call more than once.
func (k *keepalive) stop() {
	if k == nil {
		return
	}
	k.mu.Lock()
	k.stopped = true
	if k.timer != nil {
		k.timer.Stop()
	}
	k.mu.Unlock()
}

// Close stops the keepalive pings and closes the connection (releasing its
// slots), without sending a close frame, like websocket.Conn's Close.
func (c *Conn) Close() error {
	c.ka.stop()
	return c.Conn.Close()
}

// SetPongHandler sets the application's pong handler; with keepalive on
// it runs after the guard's (which records the pong and extends the read
// deadline), otherwise it is websocket.Conn's SetPongHandler.
func (c *Conn) SetPongHandler(h func(appData string) error) {
	if c.ka == nil {
		c.Conn.SetPongHandler(h)
		return
	}
	if h == nil {
		c.ka.appPong.Store(nil)
		return
	}
	c.ka.appPong.Store(&h)
}

// beginWrite sets the write deadline of a bounded write.
func (c *Conn) beginWrite() {
	if c.ka != nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.ka.cfg.WriteTimeout))
	}
}

// endWrite closes the connection after a write that timed out: the peer
// stopped reading, and a frame may be half written.
func (c *Conn) endWrite(err error) error {
	var ne net.Error
	if c.ka != nil && errors.As(err, &ne) && ne.Timeout() {
		_ = c.Close()
	}
	return err
}

// WriteMessage is websocket.Conn's WriteMessage, bounded by the keepalive
// WriteTimeout when keepalive is on.
func (c *Conn) WriteMessage(messageType int, data []byte) error {
	c.beginWrite()
	return c.endWrite(c.Conn.WriteMessage(messageType, data))
}

// WriteJSON is websocket.Conn's WriteJSON, bounded like WriteMessage.
func (c *Conn) WriteJSON(v any) error {
	c.beginWrite()
	return c.endWrite(c.Conn.WriteJSON(v))
}

// WritePreparedMessage is websocket.Conn's WritePreparedMessage, bounded
// like WriteMessage.
func (c *Conn) WritePreparedMessage(pm *websocket.PreparedMessage) error {
	c.beginWrite()
	return c.endWrite(c.Conn.WritePreparedMessage(pm))
}

// NextWriter is websocket.Conn's NextWriter; with keepalive on, the whole
// message must be written within WriteTimeout of this call.
func (c *Conn) NextWriter(messageType int) (io.WriteCloser, error) {
	c.beginWrite()
	w, err := c.Conn.NextWriter(messageType)
	return w, c.endWrite(err)
}
