package ws

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
)

// End-to-end benchmarks: one gorilla client handshaking with a gorilla echo
// server over loopback, in one process, with and without a Guard.
//
// Each iteration is a whole connection as a well-behaved client makes it:
// Dial (TCP connect + HTTP upgrade), one echo ("ping" and back), then the
// closing handshake (the client sends a close frame, reads the server's
// reply) and Close. In BenchmarkHandshake and BenchmarkHandshakeParallel an
// iteration does not wait for the server to release the connection's
// slots: a real server does that after the client has gone, concurrently
// with the next handshake. But the timed region ends only when every server
// handler has returned (and so every guarded connection has been released),
// so all the server's work is in the figures. BenchmarkHandshakeAlternating
// waits for the handler after each connection, to time each server's
// connections apart.
//
// The unguarded server upgrades with a plain websocket.Upgrader; the
// guarded one with ws.New under benchPolicy, whose limits are high enough
// never to refuse. Everything else (handler, client, dialers) is the same.
//
// Connections come from 8 loopback source addresses with
// IP_BIND_ADDRESS_NO_PORT (see loopback_linux_test.go) so that sockets in
// TIME_WAIT do not exhaust ephemeral ports over -count=10.
//
// Besides ns/op and handshakes/s (wall time) the benchmarks report
// cpu-ns/op: the CPU time the process (client and server) spent per
// connection, read with getrusage on Linux.

// benchPolicy is a realistic 3-rule policy: per-IP cap and rate, per-subnet
// cap, global cap.
const benchPolicy = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 100000, rate: 1000000/s, burst: 1000000}
  - {name: per-subnet, key: subnet, connections: 1000000}
  - {name: everyone, key: global, connections: 100000000}
`

// benchClients is the number of concurrent clients of the parallel
// benchmarks, whatever GOMAXPROCS.
const benchClients = 8

// echoServer is the echo server of the end-to-end benchmarks.
type echoServer struct {
	*httptest.Server
	g     *Guard // nil: unguarded
	store *policy.MemoryStore
	live  sync.WaitGroup
	errs  atomic.Int64
	url   string
	done  chan struct{} // when not nil, told when a handler has returned
}

func newEchoServer(tb testing.TB, guarded bool) *echoServer {
	tb.Helper()
	es := &echoServer{}
	var up websocket.Upgrader
	if guarded {
		es.store = policy.NewMemoryStore()
		g, err := New(mustPolicy(tb, benchPolicy), Options{Upgrader: up, Store: es.store})
		if err != nil {
			tb.Fatal(err)
		}
		es.g = g
	}
	es.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		es.live.Add(1)
		defer es.live.Done()
		if es.done != nil {
			defer func() { es.done <- struct{}{} }() // after c.Close below
		}
		var c *websocket.Conn
		if es.g != nil {
			gc, err := es.g.Upgrade(w, r, nil)
			if err != nil {
				es.errs.Add(1)
				return
			}
			c = gc.Conn // gc.Close is c.Close: it releases the slots
		} else {
			uc, err := up.Upgrade(w, r, nil)
			if err != nil {
				es.errs.Add(1)
				return
			}
			c = uc
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}))
	es.Config.ErrorLog = quietLog()
	es.Start()
	es.url = "ws" + strings.TrimPrefix(es.URL, "http") + "/ws"
	return es
}

// drain waits for every handler to return (every guarded connection to be
// released) and checks that nothing failed and, when guarded, that no slot
// is still held.
func (es *echoServer) drain(tb testing.TB) {
	tb.Helper()
	es.live.Wait()
	if n := es.errs.Load(); n != 0 {
		tb.Fatalf("%d upgrades failed", n)
	}
	if es.g != nil {
		if n := es.store.Stats("everyone").Connections; n != 0 {
			tb.Fatalf("%d slots still held after every handler returned", n)
		}
	}
}

func (es *echoServer) close() {
	es.Server.Close()
	if es.g != nil {
		_ = es.g.Close()
		_ = es.store.Close()
	}
}

// benchDialers returns gorilla Dialers on distinct loopback source
// addresses (one on other systems).
func benchDialers() []*websocket.Dialer {
	var ds []*websocket.Dialer
	for _, a := range loopbackSources(8) {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: a.AsSlice()}, Control: sourceControl, Timeout: 10 * time.Second}
		ds = append(ds, &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 10 * time.Second})
	}
	return ds
}

var benchMsg = []byte("ping")

// roundTrip makes one connection: handshake, one echo, closing handshake,
// Close. dialed, when not nil, receives the time the handshake (Dial) took.
func roundTrip(d *websocket.Dialer, url string, dialed *time.Duration) error {
	start := time.Now()
	c, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	if dialed != nil {
		*dialed = time.Since(start)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = c.SetReadDeadline(deadline)
	if err := c.WriteMessage(websocket.TextMessage, benchMsg); err != nil {
		return err
	}
	if _, msg, err := c.ReadMessage(); err != nil || !bytes.Equal(msg, benchMsg) {
		return fmt.Errorf("echo = %q, %v", msg, err)
	}
	if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline); err != nil {
		return err
	}
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		return fmt.Errorf("closing handshake: %v", err)
	}
	return nil
}

var benchVariants = []struct {
	name    string
	guarded bool
}{{"unguarded", false}, {"guarded", true}}

// BenchmarkHandshake: one client, one connection at a time (see the comment
// at the top of this file).
func BenchmarkHandshake(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			es := newEchoServer(b, v.guarded)
			defer es.close()
			ds := benchDialers()
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPU()
			for i := 0; i < b.N; i++ {
				if err := roundTrip(ds[i%len(ds)], es.url, nil); err != nil {
					b.Fatal(err)
				}
			}
			es.drain(b)
			b.StopTimer()
			reportHandshakes(b, cpu)
		})
	}
}

// BenchmarkHandshakeParallel: benchClients clients at once.
func BenchmarkHandshakeParallel(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			es := newEchoServer(b, v.guarded)
			defer es.close()
			ds := benchDialers()
			var next atomic.Int64
			b.SetParallelism(max(1, benchClients/runtime.GOMAXPROCS(0)))
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPU()
			b.RunParallel(func(pb *testing.PB) {
				d := ds[int(next.Add(1))%len(ds)]
				for pb.Next() {
					if err := roundTrip(d, es.url, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
			es.drain(b)
			b.StopTimer()
			reportHandshakes(b, cpu)
		})
	}
}

// startCPU returns the process CPU time at the start of a measurement, or
// -1 when it cannot be read.
func startCPU() time.Duration {
	if t, ok := processCPU(); ok {
		return t
	}
	return -1
}

// reportHandshakes reports handshakes/s and, where the process CPU time is
// available, cpu-ns/op: the CPU time of client and server together per
// connection, less sensitive than wall time to the machine's other work.
func reportHandshakes(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	if cpu1, ok := processCPU(); ok && cpu0 >= 0 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkHandshakeAlternating compares the two servers within each
// iteration: one connection to each, in alternating order, each timed from
// Dial until the server's handler has returned (so the guarded server's
// release is inside the time and cannot spill into the other server's).
// Beside ns/op (both connections) it reports each server's ns per
// connection and guarded/unguarded: the throughput ratio of one client
// making connections one after another, measured on the same machine
// state, connection by connection. It also reports
// guarded/unguarded-p50, the same ratio of the median connections: on a
// shared machine a few connections slowed by other processes move the
// sums (and the first ratio) by a percent or more, the medians much less.
// Where the process CPU time can be read (getrusage, Linux) it also
// reports each server's CPU per connection (client and server together,
// from Dial until the handler has returned, so the release and the
// closing handshake are in it) and guard-cpu-%: the guarded connection's
// extra CPU as a percentage of the unguarded one's. Other processes' load
// does not enter CPU time, but this process's garbage collector does, in
// both columns.
//
// Methodology: the same client, dialers and handler for both servers, in
// the same process and run; the order alternates every iteration, and
// each server gets connections from every source address. The ratio of
// one run still varies by a few percent on a busy machine: take the
// median over repeated runs with enough connections each, e.g.
//
//	go test -run '^$' -bench HandshakeAlternating -benchtime 5000x -count 10 ./ws/
//
// and compare the guarded/unguarded lines (benchstat, or sort and take
// the middle).
func BenchmarkHandshakeAlternating(b *testing.B) {
	var es [2]*echoServer
	for i, v := range benchVariants {
		es[i] = newEchoServer(b, v.guarded)
		es[i].done = make(chan struct{}, 1)
		defer es[i].close()
	}
	ds := benchDialers()
	var spent, cpu [2]time.Duration
	each := [2][]time.Duration{make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range 2 {
			v := (i + j) % 2 // iterations alternate which server goes first
			cpu0 := startCPU()
			start := time.Now()
			if err := roundTrip(ds[(2*i+j)%len(ds)], es[v].url, nil); err != nil {
				b.Fatal(err)
			}
			<-es[v].done
			d := time.Since(start)
			if cpu1, ok := processCPU(); ok && cpu0 >= 0 {
				cpu[v] += cpu1 - cpu0
			}
			spent[v] += d
			each[v] = append(each[v], d)
		}
	}
	b.StopTimer()
	for _, e := range es {
		e.drain(b)
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(b.N), "unguarded-ns/conn")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(b.N), "guarded-ns/conn")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "guarded/unguarded")
	med := [2]time.Duration{percentiles(each[0], 50)[0], percentiles(each[1], 50)[0]}
	b.ReportMetric(float64(med[0])/float64(med[1]), "guarded/unguarded-p50")
	if cpu[0] > 0 {
		b.ReportMetric(float64(cpu[0].Nanoseconds())/float64(b.N), "unguarded-cpu-ns/conn")
		b.ReportMetric(float64(cpu[1].Nanoseconds())/float64(b.N), "guarded-cpu-ns/conn")
		b.ReportMetric(100*float64(cpu[1]-cpu[0])/float64(cpu[0]), "guard-cpu-%")
	}
}

var (
	latencyFlag = flag.Bool("wslimit.latency", false, "run TestHandshakeLatency (handshake latency percentiles, guarded vs unguarded); also WSLIMIT_BENCH=1")
	latencyN    = flag.Int("wslimit.latencyn", 20_000, "handshakes of TestHandshakeLatency, half of them guarded")
)

// TestHandshakeLatency records the latency of single handshakes (Dial:
// TCP connect + HTTP upgrade) and of whole connections (the benchmarks'
// iteration), alternating between the guarded and the unguarded server so
// that both see the same machine, and logs percentiles. It is a
// measurement, not a check: it runs only with -wslimit.latency or
// WSLIMIT_BENCH=1, e.g.
//
//	go test -run '^TestHandshakeLatency$' -v -wslimit.latency ./ws/
func TestHandshakeLatency(t *testing.T) {
	if !*latencyFlag && !envBool("WSLIMIT_BENCH") {
		t.Skip("a measurement: run with -wslimit.latency or WSLIMIT_BENCH=1")
	}
	if raceEnabled {
		t.Skip("latency under the race detector means nothing")
	}
	servers := [2]*echoServer{newEchoServer(t, false), newEchoServer(t, true)}
	for _, es := range servers {
		defer es.close()
	}
	ds := benchDialers()
	const warm = 500
	n := max(*latencyN/2, 10)
	var dial, whole [2][]time.Duration
	for i := range 2 {
		dial[i] = make([]time.Duration, 0, n)
		whole[i] = make([]time.Duration, 0, n)
	}
	for i := range warm + n {
		for j := range 2 {
			v := (i + j) % 2 // pairs alternate which server goes first
			var dt time.Duration
			start := time.Now()
			if err := roundTrip(ds[(2*i+j)%len(ds)], servers[v].url, &dt); err != nil {
				t.Fatal(err)
			}
			wt := time.Since(start)
			if i >= warm {
				dial[v] = append(dial[v], dt)
				whole[v] = append(whole[v], wt)
			}
		}
	}
	for _, es := range servers {
		es.drain(t)
	}
	t.Logf("%d handshakes per server, alternating, after %d warm-up pairs; GOMAXPROCS=%d", n, warm, runtime.GOMAXPROCS(0))
	for _, m := range []struct {
		what string
		d    *[2][]time.Duration
	}{{"handshake (Dial)", &dial}, {"connection (Dial+echo+close)", &whole}} {
		var q [2][]time.Duration
		for v := range 2 {
			q[v] = percentiles(m.d[v], 50, 90, 99, 99.9)
		}
		t.Logf("%s:", m.what)
		t.Logf("  %-10s %9s %9s %9s %9s", "", "p50", "p90", "p99", "p99.9")
		for v, name := range []string{"unguarded", "guarded"} {
			t.Logf("  %-10s %9v %9v %9v %9v", name, q[v][0], q[v][1], q[v][2], q[v][3])
		}
		t.Logf("  %-10s %9s %9s %9s %9s", "difference", q[1][0]-q[0][0], q[1][1]-q[0][1], q[1][2]-q[0][2], q[1][3]-q[0][3])
	}
}

// percentiles returns the given percentiles of ds (nearest rank), rounded
// to 100 ns.
func percentiles(ds []time.Duration, ps ...float64) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		k := int(p/100*float64(len(s))+0.999999) - 1
		out[i] = s[min(max(k, 0), len(s)-1)].Round(100 * time.Nanosecond)
	}
	return out
}

// TestPercentiles guards the rank arithmetic of the latency report.
func TestPercentiles(t *testing.T) {
	ds := make([]time.Duration, 1000)
	for i := range ds {
		ds[i] = time.Duration(1000-i) * time.Microsecond
	}
	got := percentiles(ds, 50, 90, 99, 99.9, 100)
	want := []time.Duration{500 * time.Microsecond, 900 * time.Microsecond, 990 * time.Microsecond, 999 * time.Microsecond, 1000 * time.Microsecond}
	if !slices.Equal(got, want) {
		t.Errorf("percentiles = %v, want %v", got, want)
	}
}
