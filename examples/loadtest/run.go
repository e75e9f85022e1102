package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// Modes.
const (
	ModeConnFlood  = "conn-flood"  // open connections and hold them: caps
	ModeRateFlood  = "rate-flood"  // handshake and close, repeatedly: rate limits
	ModeRotateXFF  = "rotate-xff"  // rate-flood with a rotating X-Forwarded-For
	ModeTokenReuse = "token-reuse" // conn-flood presenting one bearer token
	// Attack modes for penalties (attack.go).
	ModeReconnectLoop = "reconnect-loop" // handshake and close at once, again and again: short_lived offences
	ModeTokenSpray    = "token-spray"    // rate-flood presenting a new forged token each time: invalid_identity offences
	ModeAddrChurn     = "addr-churn"     // rotate-xff with a new random address each time: a flood of new offenders
)

var modes = []string{ModeConnFlood, ModeRateFlood, ModeRotateXFF, ModeTokenReuse, ModeReconnectLoop, ModeTokenSpray, ModeAddrChurn}

// Hard caps: no flag can ask for more.
const (
	MaxAttempts    = 100_000
	MaxConcurrency = 1_000
	MaxRate        = 10_000 // attempts per second
	MaxDuration    = 10 * time.Minute
	MaxHold        = 10 * time.Minute
	MaxSettle      = 10 * time.Second
	MaxHandshake   = time.Minute
)

// Defaults.
const (
	defaultN           = 1000
	defaultConcurrency = 10
	defaultDuration    = 30 * time.Second
	defaultHold        = 5 * time.Second
	defaultSettle      = 100 * time.Millisecond
	defaultHandshake   = 5 * time.Second
)

// Config configures a run. The zero values of N, Concurrency, Duration,
// Hold, Settle and HandshakeTimeout mean the defaults.
type Config struct {
	URL         string
	Mode        string
	N           int           // most handshake attempts (default 1000)
	Concurrency int           // handshakes in flight at once (default 10)
	Rate        float64       // attempts per second; 0: as fast as allowed
	Duration    time.Duration // bound on the attempt phase (default 30s)
	// Hold is how long conn-flood and token-reuse keep the admitted
	// connections open after the last attempt (default 5s; negative: 0).
	Hold time.Duration
	// Settle is how long to wait after an upgrade for a refusal by close
	// (RejectCloseCodes) or, in the rate modes, for the server's close
	// reply (default 100ms; negative: do not wait, so refusals by close
	// count as admitted).
	Settle           time.Duration
	HandshakeTimeout time.Duration // default 5s

	XFFPrefix string // rotate X-Forwarded-For through this prefix (required by rotate-xff)
	XFFRandom bool   // random addresses of the prefix instead of sequential

	Token       string // bearer token (required by token-reuse); never printed
	TokenIn     string // "header" (Authorization: Bearer, default), "subprotocol" or "cookie:NAME"
	Subprotocol string // the application subprotocol offered beside "bearer.<token>" (default "chat")

	Origin  string      // Origin header, if any
	Headers http.Header // extra request headers

	// RejectCloseCodes are the close codes that, received within Settle
	// of the upgrade, count as a refusal (default 1008 and 1013).
	RejectCloseCodes []int

	// AllowNonLoopback permits targets that are not loopback addresses.
	// Without it the target must be loopback and every connection is
	// checked to be to a loopback address.
	AllowNonLoopback bool

	// Progress, when set, receives a progress line every ProgressInterval
	// (default 500ms in place, 1s otherwise); in place rewrites the line
	// with \r (for terminals).
	Progress         io.Writer
	ProgressInPlace  bool
	ProgressInterval time.Duration
}

func (c *Config) holds() bool { return c.Mode == ModeConnFlood || c.Mode == ModeTokenReuse }

// reserved headers are set by the dialer itself.
var reserved = []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol"}

var tokenChars = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]+$`)

// normalize applies defaults and checks bounds.
func (c *Config) normalize() error {
	if !slices.Contains(modes, c.Mode) {
		return fmt.Errorf("-mode %q: must be one of %s", c.Mode, strings.Join(modes, ", "))
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.N == 0 {
		c.N = defaultN
	}
	if c.Concurrency == 0 {
		c.Concurrency = defaultConcurrency
	}
	def(&c.Duration, defaultDuration)
	def(&c.Hold, defaultHold)
	def(&c.Settle, defaultSettle)
	def(&c.HandshakeTimeout, defaultHandshake)
	c.Hold, c.Settle = max(c.Hold, 0), max(c.Settle, 0)
	if c.Subprotocol == "" {
		c.Subprotocol = "chat"
	}
	if c.TokenIn == "" {
		c.TokenIn = "header"
	}
	if c.RejectCloseCodes == nil {
		c.RejectCloseCodes = []int{websocket.ClosePolicyViolation, websocket.CloseTryAgainLater}
	}
	switch {
	case c.N < 1 || c.N > MaxAttempts:
		return fmt.Errorf("-n %d: must be between 1 and %d", c.N, MaxAttempts)
	case c.Concurrency < 1 || c.Concurrency > MaxConcurrency:
		return fmt.Errorf("-c %d: must be between 1 and %d", c.Concurrency, MaxConcurrency)
	case c.Rate < 0 || c.Rate > MaxRate:
		return fmt.Errorf("-rate %g: must be between 0 (as fast as allowed) and %d", c.Rate, MaxRate)
	case c.Duration < 0 || c.Duration > MaxDuration:
		return fmt.Errorf("-duration %s: must be at most %s", c.Duration, MaxDuration)
	case c.Hold > MaxHold:
		return fmt.Errorf("-hold %s: must be at most %s", c.Hold, MaxHold)
	case c.Settle > MaxSettle:
		return fmt.Errorf("-settle %s: must be at most %s", c.Settle, MaxSettle)
	case c.HandshakeTimeout < 0 || c.HandshakeTimeout > MaxHandshake:
		return fmt.Errorf("-handshake-timeout %s: must be at most %s", c.HandshakeTimeout, MaxHandshake)
	case (c.Mode == ModeRotateXFF || c.Mode == ModeAddrChurn) && c.XFFPrefix == "":
		return errors.New("-mode " + c.Mode + " needs -xff-prefix (e.g. 2001:db8::/64 or 198.51.100.0/24)")
	case c.Mode == ModeTokenSpray && c.TokenIn == "subprotocol":
		return errors.New("-mode token-spray sends its tokens in a header or a cookie (-token-in header or cookie:NAME)")
	case c.Mode == ModeTokenReuse && c.Token == "":
		return errors.New("-mode token-reuse needs a token (-token or -token-env)")
	case c.Token != "" && !tokenChars.MatchString(c.Token):
		return errors.New("token: contains characters a header or subprotocol cannot carry")
	}
	switch {
	case c.TokenIn == "header", c.TokenIn == "subprotocol":
	case strings.HasPrefix(c.TokenIn, "cookie:") && len(c.TokenIn) > len("cookie:"):
	default:
		return fmt.Errorf("-token-in %q: must be header, subprotocol or cookie:NAME", c.TokenIn)
	}
	for name := range c.Headers {
		if slices.Contains(reserved, http.CanonicalHeaderKey(name)) {
			return fmt.Errorf("header %s is set by the WebSocket dialer", name)
		}
	}
	return nil
}

// run performs one load test and returns its summary. It refuses a target
// that is not loopback unless cfg.AllowNonLoopback is set. When ctx is
// cancelled it winds down (closing every connection) and returns what was
// recorded, with Interrupted set.
func run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.normalize(); err != nil {
		return Summary{}, err
	}
	tgt, err := parseTarget(ctx, cfg.URL)
	if err != nil {
		return Summary{}, err
	}
	if !tgt.loopback && !cfg.AllowNonLoopback {
		return Summary{}, fmt.Errorf("%s: %w; pass -i-own-this-server only for a server you own", tgt.host, errNotLoopback)
	}
	lt := &loadTest{cfg: cfg, url: tgt.url.String(), rec: newRecorder(), release: make(chan struct{})}
	if cfg.XFFPrefix != "" {
		if lt.xff, err = newAddrGen(cfg.XFFPrefix, cfg.XFFRandom || cfg.Mode == ModeAddrChurn); err != nil {
			return Summary{}, err
		}
	}
	nd := &net.Dialer{Timeout: cfg.HandshakeTimeout}
	if !cfg.AllowNonLoopback {
		nd.Control = loopbackOnly
	}
	lt.dialer = &websocket.Dialer{
		NetDialContext:   nd.DialContext,
		Proxy:            nil, // never through a proxy: the target is what is dialled
		HandshakeTimeout: cfg.HandshakeTimeout,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
	}
	if cfg.Token != "" && cfg.TokenIn == "subprotocol" {
		lt.dialer.Subprotocols = []string{cfg.Subprotocol, "bearer." + cfg.Token}
	}
	return lt.run(ctx)
}

type loadTest struct {
	cfg    Config
	url    string
	dialer *websocket.Dialer
	xff    *addrGen
	rec    *recorder

	settling sync.WaitGroup // conn-flood: connections waiting out Settle
	conns    sync.WaitGroup // every goroutine that owns a connection
	release  chan struct{}  // closed when held connections are to be closed
}

func (lt *loadTest) run(ctx context.Context) (Summary, error) {
	cfg := lt.cfg
	start := time.Now()
	stopProgress := lt.startProgress(start)

	// Attempt phase: bounded by N and by Duration.
	phase, cancel := context.WithTimeout(ctx, cfg.Duration)
	tickets := make(chan int)
	go lt.schedule(phase, start, tickets)
	var workers sync.WaitGroup
	for range min(cfg.Concurrency, cfg.N) {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := range tickets {
				lt.attempt(ctx, i)
			}
		}()
	}
	workers.Wait()
	cancel()
	attack := time.Since(start)
	lt.settling.Wait()

	// Hold phase (conn-flood, token-reuse): keep the admitted connections
	// open, then close them all. It ends early when the server has closed
	// them all.
	if cfg.holds() && cfg.Hold > 0 {
		t := time.NewTimer(cfg.Hold)
		poll := time.NewTicker(50 * time.Millisecond)
	hold:
		for lt.rec.snapshot().live > 0 {
			select {
			case <-t.C:
				break hold
			case <-ctx.Done():
				break hold
			case <-poll.C:
			}
		}
		t.Stop()
		poll.Stop()
	}
	close(lt.release)
	lt.conns.Wait()
	stopProgress()

	s := Summary{
		Mode: cfg.Mode, URL: lt.url, Concurrency: cfg.Concurrency, Rate: cfg.Rate,
		Interrupted:    ctx.Err() != nil,
		ElapsedSeconds: round3(time.Since(start).Seconds()),
		AttackSeconds:  round3(attack.Seconds()),
	}
	lt.rec.summary(&s)
	if attack > 0 {
		s.AttemptsPerSec = round3(float64(s.Attempts) / attack.Seconds())
	}
	if lt.xff != nil {
		s.XFFAddresses = lt.xff.distinct(s.Attempts)
	}
	return s, nil
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

// schedule hands out attempt numbers, paced by Rate, until N are handed out
// or ctx ends, then closes tickets.
func (lt *loadTest) schedule(ctx context.Context, start time.Time, tickets chan<- int) {
	defer close(tickets)
	var timer *time.Timer
	for i := range lt.cfg.N {
		if lt.cfg.Rate > 0 {
			at := start.Add(time.Duration(float64(i) / lt.cfg.Rate * float64(time.Second)))
			if d := time.Until(at); d > 0 {
				if timer == nil {
					timer = time.NewTimer(d)
				} else {
					timer.Reset(d)
				}
				select {
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
					return
				}
			}
		}
		// A select with both cases ready picks at random: once the phase
		// is over (a schedule running late, catching up on attempts
		// already due), no ticket may go out.
		if ctx.Err() != nil {
			return
		}
		select {
		case tickets <- i:
		case <-ctx.Done():
			return
		}
	}
}

// header builds the request header of attempt i.
func (lt *loadTest) header(i int) http.Header {
	h := http.Header{}
	for k, v := range lt.cfg.Headers {
		h[http.CanonicalHeaderKey(k)] = slices.Clone(v)
	}
	if lt.cfg.Origin != "" {
		h.Set("Origin", lt.cfg.Origin)
	}
	if lt.xff != nil {
		h.Set("X-Forwarded-For", lt.xff.addr(i).String())
	}
	tok := lt.cfg.Token
	if lt.cfg.Mode == ModeTokenSpray {
		tok = forgedToken(i)
	}
	if tok != "" {
		switch in := lt.cfg.TokenIn; {
		case in == "header":
			h.Set("Authorization", "Bearer "+tok)
		case strings.HasPrefix(in, "cookie:"):
			h.Add("Cookie", (&http.Cookie{Name: strings.TrimPrefix(in, "cookie:"), Value: tok}).String())
		}
	}
	return h
}

// attempt performs handshake i and records its outcome.
func (lt *loadTest) attempt(ctx context.Context, i int) {
	if ctx.Err() != nil {
		return // interrupted after the ticket was handed out
	}
	lt.rec.attempt()
	t0 := time.Now()
	conn, resp, err := lt.dialer.DialContext(ctx, lt.url, lt.header(i))
	lat := time.Since(t0)
	if err != nil {
		if resp != nil {
			lt.rec.handshake(lat)
			lt.rejectStatus(resp)
			return
		}
		lt.rec.fail(errorKind(ctx, err))
		return
	}
	lt.rec.handshake(lat)
	lt.conns.Add(1)
	if lt.cfg.holds() {
		// Wait out Settle without holding up the next attempt.
		lt.settling.Add(1)
		go lt.hold(ctx, conn)
		return
	}
	lt.closeNow(conn)
}

// reader reads conn until it fails and reports the error on the returned
// channel (buffered), then exits.
func reader(conn *websocket.Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				errc <- err
				return
			}
		}
	}()
	return errc
}

// closeNow (rate modes) sends a close frame and waits up to Settle for the
// server's: a refusal by close arrives here too, before our own close.
func (lt *loadTest) closeNow(conn *websocket.Conn) {
	defer lt.conns.Done()
	errc := reader(conn)
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(lt.cfg.Settle+time.Second))
	var err error
	if lt.cfg.Settle > 0 {
		t := time.NewTimer(lt.cfg.Settle)
		select {
		case err = <-errc:
			errc = nil
		case <-t.C:
		}
		t.Stop()
	}
	admitted := !lt.rejectedByClose(err)
	if admitted {
		lt.rec.admit()
	}
	conn.Close()
	if errc != nil {
		<-errc
	}
	if admitted {
		lt.rec.closeLive()
	}
}

// hold (conn-flood, token-reuse) waits up to Settle for a refusal by close,
// then keeps an admitted connection open until release, reading in the
// background.
func (lt *loadTest) hold(ctx context.Context, conn *websocket.Conn) {
	defer lt.conns.Done()
	errc := reader(conn)
	var err error // the reader's error, once received
	if lt.cfg.Settle > 0 {
		t := time.NewTimer(lt.cfg.Settle)
		select {
		case err = <-errc:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	if lt.rejectedByClose(err) {
		lt.settling.Done()
		conn.Close()
		return
	}
	lt.rec.admit()
	lt.settling.Done()
	if err == nil {
		select {
		case err = <-errc:
		case <-lt.release:
		}
	}
	if err != nil {
		// The server ended the connection first.
		lt.rec.closedByServer()
		conn.Close()
		lt.rec.closeLive()
		return
	}
	// Close politely: our close frame, the server's reply (bounded), then
	// the TCP connection; the reader ends with it.
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	t := time.NewTimer(time.Second)
	select {
	case err = <-errc:
	case <-t.C:
	}
	t.Stop()
	conn.Close()
	if err == nil {
		<-errc
	}
	lt.rec.closeLive()
}

// rejectedByClose records err as a refusal if it is a close frame with one
// of the refusal codes, and reports whether it was.
func (lt *loadTest) rejectedByClose(err error) bool {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && slices.Contains(lt.cfg.RejectCloseCodes, ce.Code) {
		rule, reason, retry := parseCloseReason(ce.Text)
		lt.rec.reject(fmt.Sprintf("close %d", ce.Code), rule, reason, retry)
		return true
	}
	return false
}

// rejectStatus records a refusal before the upgrade (429, 401, 503...).
// gorilla keeps the first 1024 bytes of the body.
func (lt *loadTest) rejectStatus(resp *http.Response) {
	var body struct {
		Rule       string `json:"rule"`
		Reason     string `json:"reason"`
		RetryAfter *int   `json:"retry_after"`
	}
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		_ = json.Unmarshal(b, &body)
	}
	retry := -1
	if s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && s >= 0 {
		retry = s
	} else if body.RetryAfter != nil {
		retry = *body.RetryAfter
	}
	lt.rec.reject(strconv.Itoa(resp.StatusCode), body.Rule, body.Reason, retry)
}

var retryIn = regexp.MustCompile(`;\s*retry in (\d+)s\s*$`)

// parseCloseReason splits a close reason of the form
// "rule: reason; retry in Ns" (ws.CloseReason); retry is -1 when absent.
func parseCloseReason(s string) (rule, reason string, retry int) {
	retry = -1
	if m := retryIn.FindStringSubmatchIndex(s); m != nil {
		retry, _ = strconv.Atoi(s[m[2]:m[3]])
		s = s[:m[0]]
	}
	rule, reason, ok := strings.Cut(s, ": ")
	if !ok {
		return "", strings.TrimSpace(s), retry
	}
	return strings.TrimSpace(rule), strings.TrimSpace(reason), retry
}

// errorKind names a failed handshake that got no HTTP response.
func errorKind(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return "cancelled"
	case errors.Is(err, errNotLoopback):
		return "refused by the loopback guard"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "address not available (ephemeral ports exhausted?)"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed during the handshake"
	case errors.Is(err, websocket.ErrBadHandshake):
		return "bad handshake"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// startProgress prints the progress line until the returned function is
// called.
func (lt *loadTest) startProgress(start time.Time) (stop func()) {
	w := lt.cfg.Progress
	if w == nil {
		return func() {}
	}
	every := lt.cfg.ProgressInterval
	if every <= 0 {
		every = time.Second
		if lt.cfg.ProgressInPlace {
			every = 500 * time.Millisecond
		}
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	var width int
	show := func() {
		line := lt.rec.snapshot().line(time.Since(start))
		if lt.cfg.ProgressInPlace {
			pad := max(width-len(line), 0)
			width = len(line)
			fmt.Fprintf(w, "\r%s%s", line, strings.Repeat(" ", pad))
		} else {
			fmt.Fprintln(w, line)
		}
	}
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				show()
			case <-done:
				show()
				if lt.cfg.ProgressInPlace {
					fmt.Fprintln(w)
				}
				return
			}
		}
	}()
	return func() { close(done); <-exited }
}
