package ws

// Fault-injection leak test: connections with random faults through a
// guarded server on loopback; at the end every counter of every rule is
// zero and no goroutine is left (go.uber.org/goleak).
//
// The short variant runs by default (a few thousand connections, at most
// ~20 s of traffic even under -race on a loaded 2-core machine):
//
//	go test -race -run TestFaultInjection -v ./ws
//
// The long variant runs at least 100,000 connections, with traffic capped
// at 10 minutes (it fails if the cap stops it short of 100,000):
//
//	go test -run TestFaultInjection -v -timeout 20m ./ws -wslimit.long
//	WSLIMIT_LONG=1 go test -run TestFaultInjection -v -timeout 20m ./ws
//
// (-race works too but handshakes are several times slower.) Each run logs
// its seed; -wslimit.seed=N (or WSLIMIT_SEED=N) replays the fault sequence
// of every worker (the interleaving is up to the scheduler).

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

var (
	longFlag = flag.Bool("wslimit.long", false, "run the long fault-injection test (>= 100,000 connections, <= 10 min); also WSLIMIT_LONG=1")
	seedFlag = flag.Uint64("wslimit.seed", 0, "seed of the fault-injection test (0: from the clock); also WSLIMIT_SEED")
)

// envBool reads a boolean environment variable ("1", "true").
func envBool(name string) bool {
	b, _ := strconv.ParseBool(os.Getenv(name))
	return b
}

// fault is what a connection of the fault-injection test does wrong.
type fault uint8

const (
	faultEcho         fault = iota // well-behaved: echo, close frame, close
	faultRST                       // client resets (SetLinger(0), Close), sometimes after an echo
	faultNoRead                    // client never reads; the server writes until its write deadline
	faultPanicClose                // handler panics; its deferred Close runs
	faultPanicNoClose              // handler panics without Close: runtime cleanup path
	faultForget                    // handler returns without Close: runtime cleanup path
	faultDoubleClose               // two goroutines close the connection at once
	faultBadUpgrade                // admitted, then gorilla refuses the handshake (no key, bad version, POST)
	faultAbort                     // client resets right after sending its handshake
	faultEager                     // client sends a frame with its handshake (gorilla refuses after the hijack)
	numFaults
)

var faultNames = [numFaults]string{
	"echo", "rst", "no-read", "panic-close", "panic-no-close", "forget",
	"double-close", "bad-upgrade", "abort-handshake", "eager-data",
}

func (f fault) String() string { return faultNames[f] }

func parseFault(s string) fault {
	for i, n := range faultNames {
		if n == s {
			return fault(i)
		}
	}
	return faultEcho
}

const (
	// faultPolicy: per-ip and global caps generous enough that admissions
	// mostly succeed (the rate rule too, on the real clock), and a cap of 2
	// per tenant that 64 workers spread over faultTenants tenants sometimes
	// hit; requests without X-Tenant skip that rule.
	faultPolicy = `version: 1
rules:
  - name: per-ip
    key: ip
    connections: 2000
    rate: 20000/s
    burst: 20000
  - name: tenant
    key: "header:X-Tenant"
    connections: 2
  - name: all
    key: global
    connections: 5000
`
	faultTenants   = 48
	faultWorkers   = 64
	noReadDeadline = 50 * time.Millisecond  // the server's write deadline for a client that never reads
	noReadHold     = 150 * time.Millisecond // how long that client stays before closing
	faultIOTimeout = 30 * time.Second       // bounds every read and handshake of the test (none expires when all is well)
)

var faultRules = []string{"per-ip", "tenant", "all"}

// faultCounts are one fault kind's outcomes.
type faultCounts struct {
	tried, admitted, refused, failed, closed atomic.Int64 // client side
	upgraded, rejected, upgradeErr           atomic.Int64 // server side
	writeTimeouts, otherWriteErrs            atomic.Int64 // server side, no-read
}

// countingObserver counts admissions that hold slots and releases: every
// one of the former must be released exactly once. It also counts the
// releases of connections that nobody ever closes (forget,
// panic-no-close): only the runtime cleanup can release those.
type countingObserver struct {
	holding, released, byCleanup atomic.Int64
	unclosed                     sync.Map // *policy.Decision of connections nobody closes
}

func (o *countingObserver) Decided(d *policy.Decision, _ time.Duration) {
	if d.Holds() {
		o.holding.Add(1)
	}
}

func (o *countingObserver) Released(d *policy.Decision) {
	o.released.Add(1)
	if _, ok := o.unclosed.LoadAndDelete(d); ok {
		o.byCleanup.Add(1)
	}
}

type faultTest struct {
	obs     countingObserver
	serving atomic.Int64 // handlers running
	g       *Guard
	store   *policy.MemoryStore
	srv     *httptest.Server
	addr    string // host:port
	counts  [numFaults]faultCounts
	blob    []byte
	errMu   sync.Mutex
	errs    []string
	errN    int
	dialers []*websocket.Dialer
	nets    []*net.Dialer
}

func (ft *faultTest) errorf(format string, args ...any) {
	ft.errMu.Lock()
	defer ft.errMu.Unlock()
	ft.errN++
	if len(ft.errs) < 20 {
		ft.errs = append(ft.errs, fmt.Sprintf(format, args...))
	}
}

// serve is the guarded handler: it misbehaves as the client's ?f= asks.
func (ft *faultTest) serve(w http.ResponseWriter, r *http.Request) {
	ft.serving.Add(1)
	defer ft.serving.Add(-1) // also when the handler panics
	f := parseFault(r.URL.Query().Get("f"))
	cnt := &ft.counts[f]
	c, err := ft.g.Upgrade(w, r, nil)
	if err != nil {
		if errors.Is(err, ErrRejected) {
			cnt.rejected.Add(1)
		} else {
			cnt.upgradeErr.Add(1)
		}
		return
	}
	cnt.upgraded.Add(1)
	// Caps are exact at every admission, not only at the end.
	if tenant := r.Header.Get("X-Tenant"); tenant != "" {
		if n := slotsOf(ft.store, "tenant", keys.String(tenant)); n > 2 || n < 1 {
			ft.errorf("%s: tenant %s holds %d slots right after an admission, cap 2", f, tenant, n)
		}
	}
	if f == faultPanicNoClose || f == faultForget {
		ft.obs.unclosed.Store(c.Decision(), struct{}{})
	}
	switch f {
	case faultPanicClose:
		defer c.Close()
		panic("fault injection: handler panic with a deferred Close")
	case faultPanicNoClose:
		panic("fault injection: handler panic, connection never closed")
	case faultForget:
		return // the application forgot Close
	case faultNoRead:
		defer c.Close()
		_ = c.SetWriteDeadline(time.Now().Add(noReadDeadline))
		for {
			if err := c.WriteMessage(websocket.BinaryMessage, ft.blob); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					cnt.writeTimeouts.Add(1)
				} else {
					cnt.otherWriteErrs.Add(1)
				}
				return
			}
		}
	case faultDoubleClose:
		_ = c.SetReadDeadline(time.Now().Add(faultIOTimeout))
		if mt, msg, err := c.ReadMessage(); err == nil {
			_ = c.WriteMessage(mt, msg)
		}
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Close()
			}()
		}
		wg.Wait()
	default: // echo, rst, abort, eager
		defer c.Close()
		for {
			_ = c.SetReadDeadline(time.Now().Add(faultIOTimeout))
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}
}

func (ft *faultTest) header(rng *rand.Rand) http.Header {
	h := http.Header{}
	if n := rng.IntN(faultTenants + 1); n > 0 {
		h.Set("X-Tenant", "t"+strconv.Itoa(n))
	}
	return h
}

// one runs one connection with fault f from source src.
func (ft *faultTest) one(rng *rand.Rand, src int, f fault) {
	cnt := &ft.counts[f]
	cnt.tried.Add(1)
	switch f {
	case faultBadUpgrade, faultAbort, faultEager:
		ft.raw(rng, src, f)
		return
	}
	u := "ws://" + ft.addr + "/ws?f=" + f.String()
	c, resp, err := ft.dialers[src].Dial(u, ft.header(rng))
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			cnt.refused.Add(1)
			return
		}
		ft.errorf("%s: dial: %v", f, err)
		return
	}
	cnt.admitted.Add(1)
	defer c.Close()
	tcp, _ := c.NetConn().(*net.TCPConn)
	switch f {
	case faultEcho:
		ft.echo(c, f)
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	case faultRST:
		if rng.IntN(2) == 0 {
			ft.echo(c, f)
		}
		if tcp != nil {
			_ = tcp.SetLinger(0)
		}
	case faultNoRead:
		if tcp != nil {
			_ = tcp.SetReadBuffer(4096)
		}
		time.Sleep(noReadHold)
		if tcp != nil && rng.IntN(2) == 0 {
			_ = tcp.SetLinger(0)
		}
	case faultPanicClose:
		ft.readToEnd(c, f)
	case faultPanicNoClose, faultForget:
		// The server holds the connection until the collector finds it;
		// the client leaves, by FIN or RST.
		if tcp != nil && rng.IntN(2) == 0 {
			_ = tcp.SetLinger(0)
		}
	case faultDoubleClose:
		ft.echo(c, f)
		ft.readToEnd(c, f)
	}
}

func (ft *faultTest) echo(c *websocket.Conn, f fault) {
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		ft.errorf("%s: write: %v", f, err)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(faultIOTimeout))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "ping" {
		ft.errorf("%s: echo = %q, %v", f, msg, err)
	}
}

// readToEnd reads until the server closes; a timeout means it never did.
func (ft *faultTest) readToEnd(c *websocket.Conn, f fault) {
	_ = c.SetReadDeadline(time.Now().Add(faultIOTimeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			ft.errorf("%s: server never closed the connection", f)
		}
		return
	}
}

// raw runs the faults that need a hand-written handshake.
func (ft *faultTest) raw(rng *rand.Rand, src int, f fault) {
	cnt := &ft.counts[f]
	ctx, cancel := context.WithTimeout(context.Background(), faultIOTimeout)
	defer cancel()
	nc, err := ft.nets[src].DialContext(ctx, "tcp4", ft.addr)
	if err != nil {
		ft.errorf("%s: dial: %v", f, err)
		return
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(faultIOTimeout))
	method, version, key := "GET", "13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	if f == faultBadUpgrade {
		switch rng.IntN(3) {
		case 0:
			key = "" // no Sec-WebSocket-Key
		case 1:
			version = "8"
		case 2:
			method = "POST"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s /ws?f=%s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: %s\r\n%s", method, f, ft.addr, version, key)
	for k, v := range ft.header(rng) {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v[0])
	}
	b.WriteString("\r\n")
	if f == faultEager {
		// A masked text frame "hi" (zero mask) in the same write.
		b.Write([]byte{0x81, 0x82, 0, 0, 0, 0, 'h', 'i'})
	}
	if _, err := nc.Write([]byte(b.String())); err != nil {
		ft.errorf("%s: write: %v", f, err)
		return
	}
	if f == faultAbort {
		_ = nc.(*net.TCPConn).SetLinger(0)
		return // reset by the deferred Close
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	switch {
	case err != nil && f == faultEager:
		cnt.closed.Add(1) // gorilla refused the upgrade after the hijack and closed
	case err != nil:
		ft.errorf("%s: response: %v", f, err)
	case resp.StatusCode == http.StatusTooManyRequests:
		cnt.refused.Add(1)
	case resp.StatusCode == http.StatusSwitchingProtocols && f == faultEager:
		cnt.admitted.Add(1) // the frame came in a later read: upgraded; leave
	case f == faultBadUpgrade && resp.StatusCode >= 400 && resp.StatusCode < 500:
		cnt.failed.Add(1)
	default:
		ft.errorf("%s: status %d", f, resp.StatusCode)
	}
	if resp != nil {
		resp.Body.Close()
	}
}

// allZero reports whether every rule holds no slot and tracks no counter.
func (ft *faultTest) allZero() bool {
	for _, r := range faultRules {
		if st := ft.store.Stats(r); st.Connections != 0 || st.Keys != 0 {
			return false
		}
	}
	return true
}

func (ft *faultTest) statsLine() string {
	var b strings.Builder
	for _, r := range faultRules {
		st := ft.store.Stats(r)
		fmt.Fprintf(&b, " %s{conns=%d keys=%d buckets=%d}", r, st.Connections, st.Keys, st.Buckets)
	}
	return b.String()
}

func TestFaultInjection(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	long := *longFlag || envBool("WSLIMIT_LONG")
	total, budget := 5000, 20*time.Second
	if long {
		total, budget = 100_000, 10*time.Minute
	}
	seed := *seedFlag
	if s, err := strconv.ParseUint(os.Getenv("WSLIMIT_SEED"), 10, 64); err == nil && seed == 0 {
		seed = s
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -wslimit.seed=%d); %d connections, traffic capped at %v, %d workers, race=%v", seed, seed, total, budget, faultWorkers, raceEnabled)

	ft := &faultTest{store: policy.NewMemoryStore(), blob: make([]byte, 4096)}
	g, err := New(mustPolicy(t, faultPolicy), Options{Store: ft.store, Observer: &ft.obs})
	if err != nil {
		t.Fatal(err)
	}
	ft.g = g
	ft.srv = httptest.NewUnstartedServer(http.HandlerFunc(ft.serve))
	ft.srv.Config.ErrorLog = quietLog() // handler panics are the point
	ft.srv.Start()
	ft.addr = strings.TrimPrefix(ft.srv.URL, "http://")
	srvClosed := false
	closeServer := func() {
		if !srvClosed {
			srvClosed = true
			ft.srv.Close()
			_ = g.Close()
		}
	}
	t.Cleanup(closeServer)

	// Several source addresses: a long run makes more connections than one
	// address has ephemeral ports while they sit in TIME_WAIT.
	for _, a := range loopbackSources(8) {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: a.AsSlice()}, Control: sourceControl, Timeout: faultIOTimeout}
		ft.nets = append(ft.nets, nd)
		ft.dialers = append(ft.dialers, &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: faultIOTimeout})
	}

	start := time.Now()
	// The runtime cleanup path needs collections; a long run allocates
	// enough to trigger them, a short one might not.
	stopGC := make(chan struct{})
	gcDone := make(chan struct{})
	var maxTenant, maxAll, issued atomic.Int64
	go func() {
		defer close(gcDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-stopGC:
				return
			case <-tick.C:
				if long && i%50 == 0 { // progress every 10 s
					t.Logf("%v: %d connections issued;%s", time.Since(start).Round(time.Second), min(issued.Load(), int64(total)), ft.statsLine())
				}
				runtime.GC()
				if top := ft.store.TopKeys("tenant", 1); len(top) > 0 && int64(top[0].Count) > maxTenant.Load() {
					maxTenant.Store(int64(top[0].Count))
				}
				if n := int64(ft.store.Stats("all").Connections); n > maxAll.Load() {
					maxAll.Store(n)
				}
			}
		}
	}()

	stopAt := start.Add(budget)
	var wg sync.WaitGroup
	for w := range faultWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				if issued.Add(1) > int64(total) || time.Now().After(stopAt) {
					return
				}
				f := fault(rng.IntN(int(numFaults)))
				ft.one(rng, rng.IntN(len(ft.dialers)), f)
			}
		}()
	}
	wg.Wait()
	traffic := time.Since(start)
	close(stopGC)
	<-gcDone

	// Every slot comes back: by Close, by the failed upgrade, by the
	// abrupt loss, or by the runtime cleanup once the collector runs
	// (forget and panic-no-close connections are closed by nobody: only
	// the cleanup releases them). The drain also waits for every handler
	// to return: a handler counts its outcome after its slot may already
	// be back (gorilla closes an eager client's connection, releasing the
	// slot, before Upgrade returns its error), and the counts are compared
	// below. The bound is slack, not a subject of the test.
	heldAfterTraffic := ft.store.Stats("all").Connections
	drainStart := time.Now()
	for !ft.allZero() || ft.serving.Load() != 0 {
		if time.Since(drainStart) > drainSlack {
			t.Fatalf("%v after the traffic: %d handlers still running, slots:%s", drainSlack, ft.serving.Load(), ft.statsLine())
		}
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	// The observer hears of a release after the store has done it: wait
	// (bounded) for the last ones before comparing admissions and
	// releases. A double release would only push released above holding,
	// which the comparison below still catches.
	for ft.obs.released.Load() < ft.obs.holding.Load() && time.Since(drainStart) <= drainSlack {
		time.Sleep(5 * time.Millisecond)
	}
	drain := time.Since(drainStart)
	closeServer()
	if n := g.Closing(); n != 0 {
		t.Errorf("close path still holds %d", n)
	}

	var done, admitted, refused, failed int64
	for f := range numFaults {
		c := &ft.counts[f]
		done += c.tried.Load()
		admitted += c.admitted.Load()
		refused += c.refused.Load()
		failed += c.failed.Load()
		t.Logf("%-15s tried %5d  admitted %5d  refused %4d  upgrade-failed %4d  closed %4d | server: upgraded %5d rejected %4d upgrade-errors %4d write-timeouts %4d other-write-errors %d",
			fault(f), c.tried.Load(), c.admitted.Load(), c.refused.Load(), c.failed.Load(), c.closed.Load(),
			c.upgraded.Load(), c.rejected.Load(), c.upgradeErr.Load(), c.writeTimeouts.Load(), c.otherWriteErrs.Load())
	}
	t.Logf("%d connections in %v (%.0f/s): %d admitted, %d refused (429), %d failed upgrades; %d admissions held slots, %d releases (%d of never-closed connections, by the runtime cleanup); %d slots held when the traffic stopped, drained in %v; peak tenant count %d (cap 2), peak global %d;%s",
		done, traffic.Round(time.Millisecond), float64(done)/traffic.Seconds(), admitted, refused, failed,
		ft.obs.holding.Load(), ft.obs.released.Load(), ft.obs.byCleanup.Load(), heldAfterTraffic, drain.Round(time.Millisecond), maxTenant.Load(), maxAll.Load(), ft.statsLine())
	if h, r := ft.obs.holding.Load(), ft.obs.released.Load(); h != r {
		t.Errorf("%d admissions held slots but %d releases: release must happen exactly once", h, r)
	}
	if want := ft.counts[faultForget].upgraded.Load() + ft.counts[faultPanicNoClose].upgraded.Load(); ft.obs.byCleanup.Load() != want {
		t.Errorf("%d never-closed connections released by the runtime cleanup, want all %d", ft.obs.byCleanup.Load(), want)
	}

	ft.errMu.Lock()
	for _, e := range ft.errs {
		t.Error(e)
	}
	if ft.errN > len(ft.errs) {
		t.Errorf("... and %d more errors", ft.errN-len(ft.errs))
	}
	ft.errMu.Unlock()
	if long && done < 100_000 {
		t.Errorf("long run made %d connections in %v, want at least 100,000", done, budget)
	}
	if maxTenant.Load() > 2 {
		t.Errorf("a tenant held %d slots, cap 2", maxTenant.Load())
	}
	// Client and server agree on every handshake the client could see.
	for f := range numFaults {
		c := &ft.counts[f]
		switch fault(f) {
		case faultAbort:
			continue // the client leaves before the answer
		case faultEager:
			if c.admitted.Load()+c.closed.Load() != c.upgraded.Load()+c.upgradeErr.Load() {
				t.Errorf("%s: client saw %d upgrades and %d closes, server %d upgrades and %d upgrade errors",
					fault(f), c.admitted.Load(), c.closed.Load(), c.upgraded.Load(), c.upgradeErr.Load())
			}
		case faultBadUpgrade:
			if c.failed.Load() != c.upgradeErr.Load() || c.upgraded.Load() != 0 {
				t.Errorf("%s: client saw %d failed upgrades, server %d (and %d upgrades)", fault(f), c.failed.Load(), c.upgradeErr.Load(), c.upgraded.Load())
			}
		default:
			if c.admitted.Load() != c.upgraded.Load() {
				t.Errorf("%s: client admitted %d, server upgraded %d", fault(f), c.admitted.Load(), c.upgraded.Load())
			}
		}
		if fault(f) != faultAbort && c.refused.Load() != c.rejected.Load() {
			t.Errorf("%s: client refused %d, server rejected %d", fault(f), c.refused.Load(), c.rejected.Load())
		}
	}
	verifyNoLeaks(t, ignore)
}

// drainSlack bounds how long the fault test waits, after its traffic, for
// every slot to come back and every goroutine to end. Neither wait is a
// subject of the test (the subjects are that they do, exactly once): a
// loaded machine only makes them longer.
const drainSlack = time.Minute

// verifyNoLeaks is goleak.VerifyNone with a retry budget of seconds:
// goleak's own retries last about half a second, and on a loaded machine a
// goroutine that is about to exit (a handler returning after its
// connection's release, a cleanup's release) may not have been scheduled
// yet. A goroutine that really leaked is still there after drainSlack.
func verifyNoLeaks(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(drainSlack)
	for {
		err := goleak.Find(opts...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines left %v after the test: %v", drainSlack, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
