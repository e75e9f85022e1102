package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/pressure"
	"github.com/wslimit/wslimit/ws"
)

// pressurePolicy: one global cap of 200 WebSockets. Past 50 live (0.25 of
// 200) the server is under pressure and refuses handshakes without a
// verified token, until fewer than 20 are live.
const pressurePolicy = `version: 1
identity:
  jwt:
    from: [header:Authorization]
    algorithms: [HS256]
    secret_env: WSLIMIT_LOADTEST_JWT_SECRET
    audience: chat
rules:
  - {name: everyone, key: global, connections: 200}
pressure:
  interval: 10ms
  connections: {cap: 200, enter: 0.25, leave: 0.1}
  refuse_unverified: true
`

// pressureServer is a loopback server guarded by pressurePolicy with a
// running pressure monitor whose connections signal is the global rule's
// live count. It counts the handshakes without a token it has answered.
type pressureServer struct {
	url  string
	mon  *pressure.Monitor
	anon atomic.Int64
}

func startPressureServer(t *testing.T) *pressureServer {
	t.Helper()
	p, err := policy.Parse([]byte(pressurePolicy), t.Name()+".yaml")
	if err != nil {
		t.Fatal(err)
	}
	store := policy.NewMemoryStore()
	s := &pressureServer{}
	s.mon = pressure.New(nil, pressure.Options{Connections: func() int { return store.Stats("everyone").Connections }})
	g, err := ws.New(p, ws.Options{Store: store, Pressure: s.mon})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	go s.mon.Run(ctx)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := g.Upgrade(w, r, nil)
		if r.Header.Get("Authorization") == "" {
			s.anon.Add(1)
		}
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(func() {
		srv.Close()
		stop()
		g.Close()
	})
	s.url = "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	return s
}

// TestPressureKeepsVerifiedUsers: an anonymous flood of 300 holds
// WebSockets open; past 50 the server is under pressure and from then on
// every anonymous handshake is refused (rule and reason "pressure"), so
// the flood never takes the 200 slots of the global cap. Then, with the
// flood's connections still held, two users with verified tokens
// handshake and close 100 times each and keep at least 99% of their
// admissions. Without the pressure section the flood would hold all
// 200 slots and every later handshake, verified or not, would be refused
// by "everyone". Outcomes are counted; no latency is asserted.
func TestPressureKeepsVerifiedUsers(t *testing.T) {
	t.Setenv("WSLIMIT_LOADTEST_JWT_SECRET", testSecret)
	srv := startPressureServer(t)

	// The flood: 300 attempts at 50/s, each admitted connection held until
	// the test ends it (its context), far longer than the run.
	const floodN = 300
	floodCtx, endFlood := context.WithTimeout(context.Background(), 2*time.Minute)
	defer endFlood()
	var flood Summary
	floodDone := make(chan error, 1)
	go func() {
		var err error
		flood, err = run(floodCtx, Config{URL: srv.url, Mode: ModeConnFlood, N: floodN, Concurrency: 8, Rate: 50,
			Duration: time.Minute, Hold: time.Minute, HandshakeTimeout: slack})
		floodDone <- err
	}()
	waitFor(t, "the flood to put the server under pressure", func() bool { return srv.mon.Level() == 1 })
	// Every attempt of the flood made: without pressure it would now hold
	// the whole cap.
	waitFor(t, "the flood's attempts", func() bool { return srv.anon.Load() >= floodN })

	// Verified users, while the flood holds its connections: each
	// handshake is closed right away, so they hold few slots at any time.
	const usersN = 100
	var wg sync.WaitGroup
	users := make([]Summary, 2)
	for i, sub := range []string{"alice", "bob"} {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": sub, "aud": "chat", "exp": time.Now().Add(time.Hour).Unix(),
		}).SignedString([]byte(testSecret))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			users[i] = mustRun(t, Config{URL: srv.url, Mode: ModeRateFlood, N: usersN, Concurrency: 2, Token: tok})
		})
	}
	wg.Wait()
	if srv.mon.Level() != 1 {
		t.Error("the pressure ended before the flood did")
	}
	endFlood()
	if err := <-floodDone; err != nil {
		t.Fatal(err)
	}

	for i, u := range users {
		t.Logf("user %d: %d attempts, %d admitted, refused %v", i, u.Attempts, u.Admitted, u.ByRule)
		if u.Attempts != usersN || u.Errors != 0 || u.Admitted*100 < 99*usersN {
			t.Errorf("verified user %d: %d of %d attempts admitted, errors %v: want at least 99%%", i, u.Admitted, u.Attempts, u.ErrorKinds)
		}
	}
	t.Logf("flood: %d attempts, %d admitted, refused %v", flood.Attempts, flood.Admitted, flood.ByRule)
	refused := flood.ByRule["pressure: pressure"]
	if flood.Attempts != floodN || flood.Errors != 0 || refused != flood.Rejected || refused < floodN-200 || flood.Admitted >= 200 {
		t.Errorf("flood: %d attempts, %d admitted, %d refused (%v), errors %v: want %d attempts, every refusal by pressure, at least %d of them, under 200 admitted",
			flood.Attempts, flood.Admitted, flood.Rejected, flood.ByRule, flood.ErrorKinds, floodN, floodN-200)
	}
}

// waitFor polls cond for up to slack.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(slack); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", slack, what)
		}
	}
}
