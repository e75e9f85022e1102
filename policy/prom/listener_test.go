package prom

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/listener"
)

func TestListenerCollector(t *testing.T) {
	p, err := policy.Parse([]byte("version: 1\nrules: [{name: r, key: ip, connections: 9}]\nlistener: {global: 1}\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim, _ := p.Listener()
	l, err := listener.New(inner, lim, listener.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for range 2 { // the second is refused by global: 1
		c, err := net.DialTimeout("tcp", l.Addr().String(), 10*time.Second)
		if err == nil {
			defer c.Close()
		}
	}
	defer func() { (<-accepted).Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().Refused[listener.ReasonGlobal] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want one refused by global", l.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewListenerCollector(l, Options{}))
	want := `
# HELP wslimit_listener_accepted_total TCP connections admitted by the listener caps.
# TYPE wslimit_listener_accepted_total counter
wslimit_listener_accepted_total 1
# HELP wslimit_listener_live_connections TCP connections admitted by the listener and not yet closed.
# TYPE wslimit_listener_live_connections gauge
wslimit_listener_live_connections 1
# HELP wslimit_listener_refused_total TCP connections refused and reset at accept, by the cap that refused them.
# TYPE wslimit_listener_refused_total counter
wslimit_listener_refused_total{reason="global"} 1
wslimit_listener_refused_total{reason="per_ip"} 0
wslimit_listener_refused_total{reason="per_subnet"} 0
wslimit_listener_refused_total{reason="rate"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
