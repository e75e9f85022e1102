package ws

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// frameConn is a net.Conn whose reads return the same masked client
// frames over and over and whose writes are discarded: a connection with
// no network, so that a benchmark measures the reading code alone.
type frameConn struct {
	block []byte
	off   int
	frame int // when not 0, a read returns at most one frame
}

func newFrameConn(payload int) *frameConn {
	frame := []byte{0x82, 0x80 | byte(payload), 0, 0, 0, 0} // FIN binary, masked, zero mask key
	frame = append(frame, make([]byte, payload)...)
	var block []byte
	for range 256 {
		block = append(block, frame...)
	}
	return &frameConn{block: block}
}

func (c *frameConn) Read(p []byte) (int, error) {
	if c.frame != 0 && len(p) > c.frame-c.off%c.frame {
		p = p[:c.frame-c.off%c.frame]
	}
	n := copy(p, c.block[c.off:])
	c.off = (c.off + n) % len(c.block)
	return n, nil
}
func (c *frameConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *frameConn) Close() error                     { return nil }
func (c *frameConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *frameConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *frameConn) SetDeadline(time.Time) error      { return nil }
func (c *frameConn) SetReadDeadline(time.Time) error  { return nil }
func (c *frameConn) SetWriteDeadline(time.Time) error { return nil }

// hijackRecorder hands out a frameConn when hijacked.
type hijackRecorder struct {
	*httptest.ResponseRecorder
	nc net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.nc, bufio.NewReadWriter(bufio.NewReader(h.nc), bufio.NewWriter(h.nc)), nil
}

func handshake() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/ws", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	return r
}

// meteredDoc limits every message by connection (messages and bytes) and
// max_size, with rates no benchmark reaches: the cost of metering, never
// of waiting. perKeyDoc adds a per-key limit (a lock per message).
const meteredDoc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 1000
messages:
  max_size: 65536
  limits:
    - name: conn
      rate: 1000000000/s
      bytes: 64GiB/s
`

const perKeyDoc = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 1000
messages:
  max_size: 65536
  limits:
    - name: conn
      rate: 1000000000/s
      bytes: 64GiB/s
    - name: ip
      per: rule:per-ip
      rate: 1000000000/s
`

// reader is what a benchmark reads messages from.
type reader interface {
	ReadMessage() (int, []byte, error)
	NextReader() (int, io.Reader, error)
}

// benchConns returns the connections to compare; with onePerRead every
// network read returns one message (a sender that sends one message per
// packet), otherwise as many as gorilla's buffer takes.
func benchConns(b *testing.B, onePerRead bool) map[string]reader {
	b.Helper()
	fc := func() *frameConn {
		c := newFrameConn(16)
		if onePerRead {
			c.frame = 6 + 16
		}
		return c
	}
	up := websocket.Upgrader{}
	bare, err := up.Upgrade(&hijackRecorder{httptest.NewRecorder(), fc()}, handshake(), nil)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]reader{"bare": bare}
	for name, doc := range map[string]string{"guarded": capDoc(1000), "metered": meteredDoc, "metered-perkey": perKeyDoc} {
		g, err := New(mustPolicy(b, doc), Options{})
		if err != nil {
			b.Fatal(err)
		}
		c, err := g.Upgrade(&hijackRecorder{httptest.NewRecorder(), fc()}, handshake(), nil)
		if err != nil {
			b.Fatal(err)
		}
		if (c.m != nil) != (name != "guarded") {
			b.Fatalf("%s: meter %v", name, c.m)
		}
		out[name] = c
	}
	return out
}

// BenchmarkReadMessage reads 16-byte messages: bare gorilla, through a
// guarded Conn without messages limits, and through one metered by two
// limits (per connection: messages and bytes; per key) and max_size. The
// difference metered - bare is the per-message price of issue 19.
//
// Charges take their time from the connection's last network read (one
// clock read per read): the onePerRead variants, where every read brings
// one message, show the price when each message needs its own.
func BenchmarkReadMessage(b *testing.B) {
	for _, one := range []bool{false, true} {
		conns := benchConns(b, one)
		prefix := ""
		if one {
			prefix = "onePerRead-"
		}
		for _, name := range []string{"bare", "guarded", "metered", "metered-perkey"} {
			c := conns[name]
			b.Run(prefix+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, _, err := c.ReadMessage(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkNextReader is BenchmarkReadMessage through NextReader and
// io.Copy to io.Discard: no per-message buffer, so allocations show.
func BenchmarkNextReader(b *testing.B) {
	conns := benchConns(b, false)
	for _, name := range []string{"bare", "guarded", "metered", "metered-perkey"} {
		c := conns[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, r, err := c.NextReader()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadMessagePaired reads 64 messages bare, then 64 metered (as
// "metered" and "metered-perkey" above), in turns, timing each
// batch by the CPU time of the benchmark's thread (threadTime), which a
// loaded machine's preemptions do not inflate, where the wall time of the
// separate benchmarks above wanders by tens of percent. Reported per
// message: bare-ns/msg, metered-ns/msg and their difference
// overhead-ns/msg.
func BenchmarkReadMessagePaired(b *testing.B) {
	for _, one := range []bool{false, true} {
		conns := benchConns(b, one)
		name := "batched"
		if one {
			name = "onePerRead"
		}
		for _, variant := range []string{"metered", "metered-perkey"} {
			benchPaired(b, name+"/"+variant, conns["bare"], conns[variant])
		}
	}
}

// benchPaired is one BenchmarkReadMessagePaired.
func benchPaired(b *testing.B, name string, bare, metered reader) {
	{
		b.Run(name, func(b *testing.B) {
			runtime.LockOSThread() // threadTime times this goroutine's thread
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			const batch = 64
			var tb, tm time.Duration
			for b.Loop() {
				t0 := threadTime(b)
				for range batch {
					if _, _, err := bare.ReadMessage(); err != nil {
						b.Fatal(err)
					}
				}
				t1 := threadTime(b)
				for range batch {
					if _, _, err := metered.ReadMessage(); err != nil {
						b.Fatal(err)
					}
				}
				t2 := threadTime(b)
				tb, tm = tb+t1-t0, tm+t2-t1
			}
			n := float64(b.N * batch)
			b.ReportMetric(float64(tb.Nanoseconds())/n, "bare-ns/msg")
			b.ReportMetric(float64(tm.Nanoseconds())/n, "metered-ns/msg")
			b.ReportMetric(float64((tm-tb).Nanoseconds())/n, "overhead-ns/msg")
		})
	}
}
