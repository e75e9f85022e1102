package listener_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	. "github.com/wslimit/wslimit/policy/listener"
)

// waitFor polls cond for up to 10 s: the accept loop runs in another
// goroutine, so what it has done is seen a little later.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustPolicy(t *testing.T, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// server accepts on a Listener with p and keeps every admitted connection
// open (in conns) until the test ends.
type server struct {
	l     *Listener
	mu    sync.Mutex
	conns []net.Conn
}

func serve(t *testing.T, p *policy.Policy, opts Options) *server {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim, _ := p.Listener()
	l, err := New(inner, lim, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	return s
}

// closeOldest closes the first admitted connection still held.
func (s *server) closeOldest() {
	s.mu.Lock()
	c := s.conns[0]
	s.conns = s.conns[1:]
	s.mu.Unlock()
	c.Close()
}

// dialFrom opens a TCP connection to addr from the loopback address src
// (any of 127.0.0.0/8 is local on Linux).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	c, err := tryDial(src, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func tryDial(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// refused dials addr from src and reports whether the server closed the
// connection: the dial itself fails with a reset (the refusal can arrive
// before connect returns), or a read ends with EOF or a reset instead of
// timing out.
func refused(t *testing.T, src, addr string) bool {
	t.Helper()
	c, err := tryDial(src, addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestPerIPCapAndRelease(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {per_ip: 2}\n")
	s := serve(t, p, Options{})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "two admissions", func() bool { return s.l.Stats().Accepted == 2 })
	if !refused(t, "127.0.0.2", addr) {
		t.Fatal("the third connection from one address was not closed")
	}
	if st := s.l.Stats(); st.Live != 2 || st.Refused[ReasonPerIP] != 1 {
		t.Fatalf("stats = %+v, want 2 live and 1 refused per_ip", st)
	}
	// Another address is not affected.
	dialFrom(t, "127.0.0.3", addr)
	waitFor(t, "the other address admitted", func() bool { return s.l.Stats().Accepted == 3 })

	// Closing one of the first two frees its slot.
	s.closeOldest()
	dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "a slot freed by Close", func() bool { return s.l.Stats().Accepted == 4 })
	if st := s.l.Stats(); st.Live != 3 || st.Refused[ReasonPerIP] != 1 {
		t.Fatalf("stats = %+v, want 3 live, still 1 refused", st)
	}
}

func TestSubnetAndGlobalCaps(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {per_subnet: 2, ipv4_prefix: 24, global: 3}\n")
	s := serve(t, p, Options{})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.1.1", addr)
	dialFrom(t, "127.0.1.2", addr)
	waitFor(t, "two admissions", func() bool { return s.l.Stats().Accepted == 2 })
	if !refused(t, "127.0.1.3", addr) {
		t.Fatal("a third connection from one /24 was not closed")
	}
	dialFrom(t, "127.0.2.1", addr)
	waitFor(t, "another /24 admitted", func() bool { return s.l.Stats().Accepted == 3 })
	if !refused(t, "127.0.3.1", addr) {
		t.Fatal("a fourth connection in all was not closed")
	}
	st := s.l.Stats()
	if st.Live != 3 || st.Refused[ReasonPerSubnet] != 1 || st.Refused[ReasonGlobal] != 1 {
		t.Fatalf("stats = %+v, want 3 live, 1 refused per_subnet, 1 global", st)
	}
}

// TestTrustedAndExemptSkipAddressCaps: a proxy's connections carry many
// clients, so per-address caps skip trusted proxies and exempt blocks;
// the global cap still counts them.
func TestTrustedAndExemptSkipAddressCaps(t *testing.T) {
	p := mustPolicy(t, `version: 1
client_ip: {trusted_proxies: [127.0.0.5/32]}
exempt: [127.0.0.6]
rules: [{name: r, key: ip, connections: 100}]
listener: {per_ip: 1, global: 4}
`)
	s := serve(t, p, Options{})
	addr := s.l.Addr().String()
	for range 2 {
		dialFrom(t, "127.0.0.5", addr)
		dialFrom(t, "127.0.0.6", addr)
	}
	waitFor(t, "four admissions past per_ip", func() bool { return s.l.Stats().Accepted == 4 })
	if !refused(t, "127.0.0.5", addr) {
		t.Fatal("the global cap did not count the trusted proxy's connections")
	}
	if st := s.l.Stats(); st.Refused[ReasonGlobal] != 1 || st.Refused[ReasonPerIP] != 0 {
		t.Fatalf("stats = %+v, want 1 refused by global, none per_ip", st)
	}
}

// TestAcceptRate uses an injected clock: 2 connections at once (burst 2),
// then one per second of the clock.
func TestAcceptRate(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {rate: 1/s, burst: 2}\n")
	var clock atomic.Int64
	t0 := time.Unix(1_000_000, 0)
	now := func() time.Time { return t0.Add(time.Duration(clock.Load())) }
	s := serve(t, p, Options{Now: now})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.3", addr)
	waitFor(t, "the burst admitted", func() bool { return s.l.Stats().Accepted == 2 })
	if !refused(t, "127.0.0.4", addr) {
		t.Fatal("a connection over the accept rate was not closed")
	}
	clock.Add(int64(time.Second))
	dialFrom(t, "127.0.0.4", addr)
	waitFor(t, "a token after one second", func() bool { return s.l.Stats().Accepted == 3 })
	if st := s.l.Stats(); st.Refused[ReasonRate] != 1 {
		t.Fatalf("stats = %+v, want 1 refused by rate", st)
	}
}

// TestCapExactUnderConcurrency: many clients of one address at once never
// get more than the cap admitted, and closing them all frees every slot.
func TestCapExactUnderConcurrency(t *testing.T) {
	const capN, clients = 5, 40
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {per_ip: 5}\n")
	s := serve(t, p, Options{})
	addr := s.l.Addr().String()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []net.Conn
	for range clients {
		wg.Go(func() {
			if c, err := tryDial("127.0.0.9", addr); err == nil { // a refusal may reset the dial
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	waitFor(t, "every connection decided", func() bool {
		st := s.l.Stats()
		return st.Accepted+st.Refused[ReasonPerIP] == clients
	})
	if st := s.l.Stats(); st.Accepted != capN || st.Live != capN {
		t.Fatalf("stats = %+v, want exactly %d admitted and live", st, capN)
	}
	for range capN {
		s.closeOldest()
	}
	if st := s.l.Stats(); st.Live != 0 {
		t.Fatalf("after closing all: %+v, want nothing live", st)
	}
}

// TestDoubleCloseReleasesOnce: Close twice frees one slot, not two.
func TestDoubleCloseReleasesOnce(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {global: 2}\n")
	s := serve(t, p, Options{})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.3", addr)
	waitFor(t, "two admissions", func() bool { return s.l.Stats().Live == 2 })
	s.mu.Lock()
	c := s.conns[0]
	s.mu.Unlock()
	c.Close()
	c.Close()
	if st := s.l.Stats(); st.Live != 1 {
		t.Fatalf("after a double Close: %+v, want 1 live", st)
	}
}

// TestUnreachableConnReleased: a connection dropped without Close frees
// its slot once the collector finds it unreachable.
func TestUnreachableConnReleased(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {global: 1}\n")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim, _ := p.Listener()
	l, err := New(inner, lim, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{})
	go func() {
		if _, err := l.Accept(); err == nil { // dropped on the floor
			close(accepted)
		}
	}()
	dialFrom(t, "127.0.0.2", l.Addr().String())
	<-accepted
	waitFor(t, "the cleanup to release the slot", func() bool {
		runtime.GC()
		return l.Stats().Live == 0
	})
}

// TestIdleKeepAliveCapped: with net/http, idle keep-alive connections hold
// listener slots, and a hijacked WebSocket holds its slot until it closes.
func TestIdleKeepAliveCapped(t *testing.T) {
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 100}]\nlistener: {per_ip: 2}\n")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim, _ := p.Listener()
	l, err := New(inner, lim, Options{})
	if err != nil {
		t.Fatal(err)
	}
	up := websocket.Upgrader{}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			io.WriteString(w, "ok")
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		go func() { // the handler returns; the connection lives on
			defer c.Close()
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
	})}
	go srv.Serve(l)
	defer srv.Close()

	// Two raw connections, each completing one request and then kept open:
	// two idle keep-alive connections for certain (an http.Client could reuse
	// one connection for both requests when the first finishes early).
	var idle []net.Conn
	for range 2 {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 10 * time.Second}
		c, err := nd.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		if n, err := c.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "200 OK") {
			t.Fatalf("keep-alive request: %q, %v", buf[:n], err)
		}
		idle = append(idle, c)
	}
	waitFor(t, "two live keep-alive connections", func() bool { return l.Stats().Live == 2 })
	d := websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 10 * time.Second}
		return nd.Dial(network, addr)
	}, HandshakeTimeout: 10 * time.Second}
	if c, _, err := d.Dial("ws://"+l.Addr().String()+"/", nil); err == nil {
		c.Close()
		t.Fatal("a WebSocket from an address holding two idle connections got through per_ip 2")
	}
	for _, c := range idle {
		c.Close()
	}
	waitFor(t, "idle connections released", func() bool { return l.Stats().Live == 0 })
	c, _, err := d.Dial("ws://"+l.Addr().String()+"/", nil)
	if err != nil {
		t.Fatalf("WebSocket after the idle connections closed: %v", err)
	}
	waitFor(t, "the WebSocket holding a slot", func() bool { return l.Stats().Live == 1 })
	c.Close()
	waitFor(t, "the WebSocket's slot released", func() bool { return l.Stats().Live == 0 })
}

func TestPolicyValidation(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"listener: {}", "sets no limit"},
		{"listener: {per_ip: -1}", "listener.per_ip"},
		{"listener: {per_ip: 1, ipv4_prefix: 20}", "no effect without per_subnet"},
		{"listener: {per_subnet: 1, ipv4_prefix: 40}", "listener.ipv4_prefix"},
		{"listener: {per_ip: 1, burst: 3}", "no effect without rate"},
		{"listener: {rate: fast}", "listener.rate"},
		{"listener: {per_ip: 1, bogus: 1}", "unknown field"},
	} {
		_, err := policy.Parse([]byte("version: 1\nrules: [{name: r, key: ip, connections: 1}]\n"+tc.yaml+"\n"), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "p.yaml:3:") {
			t.Errorf("%s: error %v, want p.yaml:3:… mentioning %q", tc.yaml, err, tc.want)
		}
	}
	p := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 1}]\nlistener: {per_subnet: 4, rate: 10/s}\n")
	lc, ok := p.Listener()
	if !ok || lc.IPv4Prefix != 24 || lc.IPv6Prefix != 64 || lc.Burst != 10 || lc.Rate != 10 {
		t.Fatalf("compiled = %+v, %v; want prefixes 24/64, rate 10/s and burst 10", lc, ok)
	}
	if _, ok := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 1}]\n").Listener(); ok {
		t.Fatal("a policy without a listener section reports one")
	}
}

// TestSetPolicy: a reload keeps the open connections' slots and applies
// the new cap to the next accept.
func TestSetPolicy(t *testing.T) {
	s := serve(t, mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 9}]\nlistener: {per_ip: 3}\n"), Options{})
	addr := s.l.Addr().String()
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "two admissions", func() bool { return s.l.Stats().Live == 2 })
	lim, _ := mustPolicy(t, "version: 1\nrules: [{name: r, key: ip, connections: 9}]\nlistener: {per_ip: 2}\n").Listener()
	s.l.SetLimits(lim)
	if !refused(t, "127.0.0.2", addr) {
		t.Fatal("the lowered cap did not count the connections opened before the reload")
	}
	if st := s.l.Stats(); st.Live != 2 {
		t.Fatalf("after the reload: %+v, want the 2 open connections still counted", st)
	}
}
