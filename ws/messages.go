package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/messages"
	"github.com/wslimit/wslimit/policy/penalty"
)

// Close codes of the messages limits (see policy/messages).
const (
	CloseMessageTooBig = websocket.CloseMessageTooBig // 1009: a message over max_size
)

// ErrMessageLimit is returned (wrapped, with the close reason) by Conn's
// reads after a messages limit closed the connection (1008, or 1009 for
// max_size).
var ErrMessageLimit = errors.New("ws: messages limit")

// compileMessages compiles p's messages section; nil without one. The
// policy validated it already, so an error cannot happen; it would leave
// the connections unmetered.
func compileMessages(p *policy.Policy) *messages.Limits {
	cfg := p.Config()
	if cfg.Messages == nil {
		return nil
	}
	rules := p.Rules()
	names := make([]string, len(rules))
	for i := range rules {
		names[i] = rules[i].Rule
	}
	l, err := messages.Compile(*cfg.Messages, names, cfg.Mode == "dry_run")
	if err != nil {
		return nil
	}
	return l
}

// Messages returns the table of the guard's messages limits: its Stats
// and Keys are what policy/prom's MessagesCollector exports.
func (g *Guard) Messages() *messages.Table { return g.msgs }

// Meter returns a meter of the messages limits for an admitted decision
// (from Admit), for connections that Upgrade does not make: the caller
// charges every message it reads and acts on the Result (see
// messages.Meter), and calls Close when the connection ends. It returns
// nil when the policy has no messages section or the client is exempt.
// Middleware opens one for each connection itself: see MeterFrom.
func (g *Guard) Meter(d *policy.Decision) *messages.Meter {
	if d == nil || !d.Allowed || d.Exempt || !g.msgs.Limited() {
		return nil // before the closure, which costs an allocation
	}
	claims := d.Claims()
	return g.msgs.Open(d.ClientIP, func(rule string) (keys.Key, bool) {
		for i := range claims {
			if claims[i].Rule == rule {
				return claims[i].Key, true
			}
		}
		return keys.Key{}, false
	})
}

type meterKey struct{}

// MeterFrom returns the meter Middleware opened for the connection of the
// request whose context is ctx; nil when there is none (no messages
// section, an exempt client). Middleware closes it with the connection.
func MeterFrom(ctx context.Context) *messages.Meter {
	m, _ := ctx.Value(meterKey{}).(*messages.Meter)
	return m
}

// meteredReader is the reader Conn.NextReader returns under messages
// limits: it counts the message's bytes, refuses it past max_size, and
// charges its bytes every chunk and when the next message begins. It
// lives in the Conn (one reader at a time), so a message costs no
// allocation.
type meteredReader struct {
	c          *Conn
	r          io.Reader
	size       int // bytes read of the current message
	pending    int // bytes read and not charged yet
	max, chunk int
	over       bool  // the size bound was reported for this message
	err        error // set when a limit closed the connection
}

// NextReader returns the next data message's type and reader, as
// websocket.Conn.NextReader does, under the policy's messages limits: a
// throttled connection waits here before the message is returned (and
// reads nothing meanwhile); a connection over a close limit or max_size
// is closed with 1008 or 1009 and a reason, and the error wraps
// ErrMessageLimit.
func (c *Conn) NextReader() (int, io.Reader, error) {
	if c.m == nil {
		return c.Conn.NextReader()
	}
	if c.mr.err != nil {
		return 0, nil, c.mr.err
	}
	mt, r, err := c.Conn.NextReader()
	if err != nil {
		return mt, r, err
	}
	mr := &c.mr
	if res := c.m.Charge(1, mr.pending); res.Wait != 0 || res.Code != 0 {
		if err := c.act(res); err != nil {
			return 0, nil, err
		}
	}
	mr.r, mr.size, mr.pending, mr.over = r, 0, 0, false
	mr.max, mr.chunk = c.m.MaxSize(), c.m.Chunk()
	return mt, mr, nil
}

// ReadMessage reads the next data message, as websocket.Conn.ReadMessage
// does, through NextReader's limits.
func (c *Conn) ReadMessage() (int, []byte, error) {
	if c.m == nil {
		return c.Conn.ReadMessage()
	}
	mt, _, err := c.NextReader()
	if err != nil {
		return mt, nil, err
	}
	p, err := c.mr.readAll()
	if err != nil {
		return mt, nil, err // a refused message's start is not kept
	}
	return mt, p, nil
}

// readAll is io.ReadAll(mr) with the metering inline: the message's
// bytes are read straight from gorilla's reader, in buffers grown as
// io.ReadAll grows them, at most max+1 bytes.
func (mr *meteredReader) readAll() ([]byte, error) {
	b := make([]byte, 0, 512)
	for {
		n, err := mr.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // let append grow the buffer
		}
	}
}

// ReadJSON reads the next message as JSON, as websocket.Conn.ReadJSON
// does, through NextReader's limits.
func (c *Conn) ReadJSON(v any) error {
	_, r, err := c.NextReader()
	if err != nil {
		return err
	}
	if err = json.NewDecoder(r).Decode(v); err == io.EOF {
		err = io.ErrUnexpectedEOF // a message with no JSON in it
	}
	return err
}

func (mr *meteredReader) Read(p []byte) (int, error) {
	if mr.err != nil {
		return 0, mr.err
	}
	if mr.max > 0 && len(p) > mr.max-mr.size+1 {
		p = p[:max(1, mr.max-mr.size+1)] // read at most max+1 bytes of a message
	}
	n, err := mr.r.Read(p)
	mr.size += n
	mr.pending += n
	if mr.max > 0 && mr.size > mr.max && !mr.over {
		mr.over = true
		if res := mr.c.m.Oversize(mr.size); res.Code != 0 {
			return 0, mr.c.act(res)
		}
	}
	if mr.pending >= mr.chunk {
		res := mr.c.m.Charge(0, mr.pending)
		mr.pending = 0
		if res.Wait != 0 || res.Code != 0 {
			if aerr := mr.c.act(res); aerr != nil {
				return 0, aerr
			}
		}
	}
	return n, err
}

// act throttles (waits, reading nothing) or closes as res says.
func (c *Conn) act(res messages.Result) error {
	// A message a limit throttles or closes is one offence for the
	// penalties that count messages (offences.messages).
	c.d.Offender.Offend(penalty.KindMessage)
	if res.Code != 0 {
		return c.closeLimited(res)
	}
	t := time.NewTimer(res.Wait)
	defer t.Stop()
	select {
	case <-t.C:
		if c.nc.stamp != nil {
			c.m.Stamp() // the messages already buffered arrived no later than now
		}
		return nil
	case <-c.m.Done():
		return fmt.Errorf("ws: connection closed while throttled: %w", net.ErrClosed)
	}
}

// closeLimited sends the close frame, waits up to closeLinger for the
// peer to finish (discarding what it still sends, so that the close frame
// is not lost to a reset) and closes the connection.
func (c *Conn) closeLimited(res messages.Result) error {
	err := fmt.Errorf("ws: closed (%d %s): %w", res.Code, res.Reason, ErrMessageLimit)
	c.mr.err = err
	deadline := time.Now().Add(closeLinger)
	_ = c.Conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(res.Code, res.Reason), deadline)
	nc := c.Conn.NetConn()
	if u, ok := nc.(interface{ Unwrap() net.Conn }); ok {
		nc = u.Unwrap()
	}
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = nc.SetReadDeadline(deadline)
	_, _ = io.Copy(io.Discard, nc)
	_ = c.Close()
	return err
}
