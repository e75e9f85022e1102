package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fdPolicy caps the demo well below the 256 descriptors the test gives it:
// 32 TCP connections per address, 150 in all.
const fdPolicy = `version: 1
rules:
  - {name: per-ip, key: ip, connections: 5}
  - {name: everyone, key: global, connections: 100}
listener: {per_ip: 32, global: 150}
`

// TestListenerHoldsUnderFDLimit runs the demo server under prlimit
// --nofile=256 while one address (127.0.0.2) opens 1,000 connections, half
// of them idle keep-alive after one request and half slowloris (headers
// never finished): the listener caps give that address 32 descriptors and
// reset the rest, so a WebSocket from another address (127.0.0.3) still
// gets through at once and the server never runs out of descriptors.
// Without the listener the idle connections would hold every descriptor
// for the server's 60 s idle timeout.
func TestListenerHoldsUnderFDLimit(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("no prlimit on PATH (util-linux)")
	}
	dir := t.TempDir()
	pf := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte(fdPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := buildDemo(t, dir)
	admin := freeAddr(t)
	p := startDemoWith(t, []string{prlimit, "--nofile=256:256", "--"}, bin, 0, "-policy", pf, "-admin", admin)

	held := attack(t, p.addr, "127.0.0.2", 1000)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	t.Logf("%d of the attacker's connections were not yet seen closed by the client", len(held))

	d := websocket.Dialer{NetDial: dialFromFunc("127.0.0.3"), HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial("ws://"+p.addr+"/ws", nil)
	if err != nil {
		t.Fatalf("a client from another address got no WebSocket: %v\nserver:\n%s", err, tail(p.out.String(), 3000))
	}
	echo(t, c, "still here")
	c.Close()

	m := scrape(t, admin)
	// Besides the attacker's 32, the listener may still count a few of
	// other clients: the readiness probe's idle keep-alive connection, and
	// the WebSocket above until the server has read its close.
	const others = 4
	if live := m[`wslimit_listener_live_connections`]; live > 32+others {
		t.Errorf("listener live connections = %v, want at most 32 (attacker) + %d", live, others)
	}
	if refused := m[`wslimit_listener_refused_total{reason="per_ip"}`]; refused < 1000-32-1 {
		t.Errorf("refused per_ip = %v, want at least %d of the attacker's 1000", refused, 1000-32-1)
	}
	if out := p.out.String(); strings.Contains(out, "too many open files") {
		t.Errorf("the server ran out of descriptors:\n%s", tail(out, 3000))
	}
}

// attack opens n connections to addr from src, 50 at a time: even ones
// send one complete request, read the response and stay idle (keep-alive);
// odd ones send half a request and stop (slowloris). It returns the
// connections that the server did not close by the time they were set up.
func attack(t *testing.T, addr, src string, n int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var held []net.Conn
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dialFromFunc(src)("tcp", addr)
			if err != nil {
				return // reset by the listener before connect returned
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if i%2 == 1 {
				_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo\r\nX-Slow: ")
			} else if _, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo\r\n\r\n"); err == nil {
				var resp *http.Response
				if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			if err != nil {
				c.Close()
				return
			}
			_ = c.SetDeadline(time.Time{})
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return held
}

func dialFromFunc(src string) func(network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	return d.Dial
}

var metricLine = regexp.MustCompile(`^(wslimit_listener_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+]+)$`)

// scrape reads the listener metrics from the admin listener's /metrics.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := metricLine.FindStringSubmatch(sc.Text()); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatal(fmt.Errorf("metric %s: %w", m[1], err))
			}
			out[m[1]] = v
		}
	}
	if len(out) == 0 {
		t.Fatal("no listener metrics on /metrics")
	}
	return out
}
