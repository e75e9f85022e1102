package ws

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/messages"
	"github.com/wslimit/wslimit/policy/penalty"
	"github.com/wslimit/wslimit/policy/pressure"
)

// Close codes sent in close mode.
const (
	CloseTryAgainLater   = websocket.CloseTryAgainLater   // 1013: a cap or rate refused
	ClosePolicyViolation = websocket.ClosePolicyViolation // 1008: a required identity is missing, or the key is banned
)

// closeLinger is how long a close-mode connection waits for the client's
// close frame before the TCP connection is dropped.
const closeLinger = time.Second

// ErrRejected is returned (wrapped in a *RejectError) by Upgrade when the
// policy refused the handshake; the response has already been written.
var ErrRejected = errors.New("ws: handshake rejected")

// RejectError describes a refused handshake.
type RejectError struct {
	// Decision is the limiter's decision, naming rule and reason.
	Decision *policy.Decision
}

// Error names the rule and the reason.
func (e *RejectError) Error() string {
	return fmt.Sprintf("ws: handshake rejected by rule %q: %s", e.Decision.Rule, e.Decision.Reason)
}

// Unwrap returns ErrRejected.
func (e *RejectError) Unwrap() error { return ErrRejected }

// Options configure a Guard. The zero value is usable: a default
// websocket.Upgrader (same-origin check), in-memory state, no logs, the
// default rejection responses.
type Options struct {
	// Upgrader performs the upgrade; its CheckOrigin, Subprotocols and
	// buffer settings apply as usual.
	Upgrader websocket.Upgrader
	// Store holds limiting state; nil means in-memory.
	Store policy.Store
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger, when set, receives rejection lines (rule, reason, key,
	// client IP, retry_after, invalid_token), at most LogRate per second
	// with bursts of LogBurst; lines over that budget are counted and the
	// next line carries suppressed=N. Tokens are never logged.
	Logger *slog.Logger
	// LogRate and LogBurst bound rejection lines (defaults DefaultLogRate,
	// DefaultLogBurst).
	LogRate  float64
	LogBurst int
	// HashKeys logs keys as a short SHA-256 prefix and leaves out the
	// client IP, for privacy.
	HashKeys bool
	// Observer, when set, is told of every decision and release (metrics).
	Observer policy.Observer
	// Reject, when set, replaces the default rejection response in status
	// mode. It must write a response.
	Reject func(w http.ResponseWriter, r *http.Request, d *policy.Decision)
	// Keepalive, when set, pings upgraded connections and closes those
	// whose peer stops answering or reading (see Keepalive); zero is off.
	// It applies to Upgrade, not to Middleware.
	Keepalive Keepalive
	// OnMessageLimit, when set, is told of every message or byte charge
	// over a messages limit (throttled, closed, or in dry run would have
	// been): the hook for penalties. It runs on the reading goroutine and
	// must not block.
	OnMessageLimit func(messages.Violation)
	// Penalties holds the policy's penalty state (policy.Options.Penalties);
	// nil means an engine of the Guard's own. Inspect lists its bans.
	Penalties *penalty.Engine
	// Pressure, when set, is the monitor whose level the policy's pressure
	// section acts on (policy.Options.Pressure); the caller runs it. The
	// inspection shows its status.
	Pressure *pressure.Monitor
}

// Guard admits WebSocket handshakes under a policy before upgrading them.
// It is safe for concurrent use.
type Guard struct {
	lim      *policy.Limiter
	store    policy.Store
	ownStore bool // store was created by New
	up       websocket.Upgrader
	// checked is up with CheckOrigin already answered: Upgrade runs the
	// application's CheckOrigin once, before admission, and upgrades
	// through checked so that it does not run again inside gorilla.
	checked websocket.Upgrader
	log     *rejectLog
	reject  func(w http.ResponseWriter, r *http.Request, d *policy.Decision)
	ka      Keepalive // with defaults filled in; zero when off
	msgs    *messages.Table
	pen     *penalty.Engine
	press   *pressure.Monitor

	mu        sync.Mutex // guards the close-path bounds; orders wg.Add before Close's wg.Wait
	closed    bool
	closing   int                // refused connections being closed
	closingIP map[netip.Addr]int // the same per client address; entries only while > 0
	wg        sync.WaitGroup

	live liveSet // upgraded connections, for Shutdown
}

// New returns a Guard enforcing p.
func New(p *policy.Policy, opts Options) (*Guard, error) {
	if p == nil {
		return nil, errors.New("ws: nil policy")
	}
	var ka Keepalive
	if opts.Keepalive.on() {
		var err error
		if ka, err = opts.Keepalive.withDefaults(); err != nil {
			return nil, err
		}
	}
	store := opts.Store
	if store == nil {
		store = policy.NewMemoryStore()
	}
	pen := opts.Penalties
	if pen == nil {
		pen = penalty.New(penalty.Options{Now: opts.Now, Logger: opts.Logger})
	}
	g := &Guard{
		lim:       policy.NewLimiter(p, policy.Options{Store: store, Now: opts.Now, Logger: opts.Logger, Observer: opts.Observer, Penalties: pen, Pressure: opts.Pressure}),
		pen:       pen,
		press:     opts.Pressure,
		store:     store,
		ownStore:  opts.Store == nil,
		up:        opts.Upgrader,
		checked:   opts.Upgrader,
		reject:    opts.Reject,
		ka:        ka,
		closingIP: map[netip.Addr]int{},
		msgs:      messages.NewTable(compileMessages(p), messages.TableOptions{Now: opts.Now, OnViolation: opts.OnMessageLimit}),
	}
	g.checked.CheckOrigin = func(*http.Request) bool { return true }
	if opts.Logger != nil {
		now := opts.Now
		if now == nil {
			now = time.Now
		}
		g.log = newRejectLog(opts.Logger, now, opts.LogRate, opts.LogBurst, opts.HashKeys)
	}
	return g, nil
}

// Limiter returns the guard's limiter (for reloads and inspection).
func (g *Guard) Limiter() *policy.Limiter { return g.lim }

// SetPolicy swaps the policy for later handshakes (see
// policy.Limiter.SetPolicy) and its messages limits for live connections
// too (see messages.Table.SetLimits).
func (g *Guard) SetPolicy(p *policy.Policy) {
	g.lim.SetPolicy(p)
	g.msgs.SetLimits(compileMessages(p))
}

// Close waits for close-mode connections to finish closing and closes the
// store if the guard created it. Live connections keep their slots until
// they close.
func (g *Guard) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
	if g.ownStore {
		return g.store.Close()
	}
	return nil
}

// Conn is an admitted WebSocket connection. Closing it, by Close on it or
// on the embedded *websocket.Conn, or by closing its network connection,
// releases every slot it holds, exactly once; so does the garbage collector
// when the connection becomes unreachable without being closed.
type Conn struct {
	*websocket.Conn
	d *policy.Decision

	// When d holds slots, the two wrappers that tie the release to the
	// network connection live in the Conn's allocation (one allocation per
	// connection instead of three).
	hw hijackWriter  // the ResponseWriter gorilla upgrades through
	nc releasingConn // the network connection gorilla holds

	ka *keepalive // nil when keepalive is off

	m  *messages.Meter // nil without messages limits
	mr meteredReader
}

// Decision returns the admission decision of the connection.
func (c *Conn) Decision() *policy.Decision { return c.d }

// Upgrade evaluates the policy for r and, when admitted, upgrades the
// connection. When refused it writes the rejection (HTTP 429/401/503 with
// Retry-After and a JSON body, or in close mode an upgrade followed by a
// close frame) and returns an error wrapping ErrRejected. When the upgrade
// itself fails, the slots are released at once and gorilla's error is
// returned. Requests that are not valid WebSocket handshakes (method,
// Connection, Upgrade, Sec-WebSocket-Version, Sec-WebSocket-Key: what the
// Upgrader would refuse anyway), or whose origin the Upgrader refuses, are
// answered by the Upgrader before any rule is evaluated: they spend no
// token, hold no slot and count as neither admission nor rejection.
func (g *Guard) Upgrade(w http.ResponseWriter, r *http.Request, responseHeader http.Header) (*Conn, error) {
	if g.refuseShutdown(w) {
		return nil, ErrShutdown
	}
	if status, _ := checkHandshake(r); status != 0 || !g.checkOrigin(r) {
		return nil, g.refuseUpgrade(w, r, responseHeader)
	}
	return g.upgrade(w, r, responseHeader, g.lim.Admit(r.Context(), r))
}

// refuseUpgrade has the Upgrader answer a request that is not a valid
// WebSocket handshake or whose origin it refuses, so that the response
// (status, Sec-WebSocket-Version: 13, Upgrader.Error) is gorilla's own.
func (g *Guard) refuseUpgrade(w http.ResponseWriter, r *http.Request, responseHeader http.Header) error {
	c, err := g.up.Upgrade(w, r, responseHeader) // writes the error response
	if err == nil {
		// Cannot happen: the Upgrader refuses what we pre-checked.
		c.Close()
		err = errors.New("ws: unexpected upgrade")
	}
	return err
}

// upgrade acts on the decision d for r: writes the rejection, or upgrades.
func (g *Guard) upgrade(w http.ResponseWriter, r *http.Request, responseHeader http.Header, d *policy.Decision) (*Conn, error) {
	r = withProtocols(r, d.Protocols)
	if !d.Allowed {
		g.logReject(r, d)
		g.writeReject(w, r, d, responseHeader)
		return nil, &RejectError{Decision: d}
	}
	if d.WouldReject {
		g.logReject(r, d)
	}
	m := g.Meter(d)
	if !d.Holds() && m == nil {
		c, err := g.checked.Upgrade(w, r, responseHeader)
		if err != nil {
			return nil, err
		}
		gc := &Conn{Conn: c, d: d}
		g.startKeepalive(gc)
		g.track(gc)
		return gc, nil
	}
	gc := &Conn{d: d, m: m}
	gc.mr.c = gc
	gc.nc.d, gc.nc.m, gc.nc.stamp = d, m, m
	gc.hw = hijackWriter{ResponseWriter: w, nc: &gc.nc}
	c, err := g.checked.Upgrade(&gc.hw, r, responseHeader)
	// The response, and with it the request, must not live as long as the
	// connection.
	gc.hw.ResponseWriter = nil
	if err != nil {
		gc.nc.release()
		return nil, err
	}
	gc.Conn = c
	g.startKeepalive(gc)
	g.track(gc)
	return gc, nil
}

// withProtocols returns r, or when protocols is not nil a shallow copy of
// r whose Sec-WebSocket-Protocol lines are protocols (the decision's offer
// without token entries; none when empty), so that the Upgrader can never
// select a token and echo it back as the subprotocol.
func withProtocols(r *http.Request, protocols []string) *http.Request {
	if protocols == nil {
		return r
	}
	r2 := r.WithContext(r.Context())
	r2.Header = r.Header.Clone()
	if len(protocols) == 0 {
		r2.Header.Del("Sec-Websocket-Protocol")
	} else {
		r2.Header["Sec-Websocket-Protocol"] = protocols
	}
	return r2
}

func (g *Guard) checkOrigin(r *http.Request) bool {
	if g.up.CheckOrigin != nil {
		return g.up.CheckOrigin(r)
	}
	return sameOrigin(r)
}

func (g *Guard) logReject(r *http.Request, d *policy.Decision) {
	if g.log != nil {
		g.log.write(r, d)
	}
}

// rejectBody is the JSON body of a refused handshake.
type rejectBody struct {
	Error      string `json:"error"`
	Rule       string `json:"rule,omitempty"`
	Reason     string `json:"reason"`
	RetryAfter int    `json:"retry_after,omitempty"`
}

// maxRetryAfter caps Retry-After (a bucket that never refills reports an
// infinite delay).
const maxRetryAfter = 24 * time.Hour

// RetryAfterSeconds rounds d up to whole seconds, at least 1 and at most a
// day.
func RetryAfterSeconds(d time.Duration) int {
	d = min(d, maxRetryAfter)
	s := int((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// writeReject answers a refused handshake as the deciding policy's reject
// section says.
func (g *Guard) writeReject(w http.ResponseWriter, r *http.Request, d *policy.Decision, h http.Header) {
	rj := d.Policy().Reject()
	// In auto mode: browsers always send Origin and cannot read a refused
	// handshake's status; other clients read 429 cheaply. Origin is
	// forgeable, so the close path is bounded (acquireClose).
	closing := rj.Mode == "close" || rj.Mode == "auto" && r.Header.Get("Origin") != ""
	if closing && g.acquireClose(d.ClientIP, rj) {
		g.closeReject(w, r, d, h)
		return
	}
	g.writeStatus(w, r, d, rj)
}

// acquireClose takes a place on the bounded close path: at most
// max_closing refused connections being closed at once, and at most
// max_closing_per_ip per client address. Past either bound the refusal is
// answered with a status, which costs no upgrade.
func (g *Guard) acquireClose(ip netip.Addr, rj policy.RejectConfig) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.closing >= rj.MaxClosing || g.closingIP[ip] >= rj.MaxClosingPerIP {
		return false
	}
	g.closing++
	g.closingIP[ip]++
	g.wg.Add(1)
	return true
}

func (g *Guard) releaseClose(ip netip.Addr) {
	g.mu.Lock()
	g.closing--
	if n := g.closingIP[ip] - 1; n > 0 {
		g.closingIP[ip] = n
	} else {
		delete(g.closingIP, ip)
	}
	g.mu.Unlock()
	g.wg.Done()
}

// Closing returns the number of refused connections being closed.
func (g *Guard) Closing() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closing
}

// writeStatus answers a refused handshake with a status: Options.Reject's,
// or the default response (with the RateLimit headers when rj asks for
// them).
func (g *Guard) writeStatus(w http.ResponseWriter, r *http.Request, d *policy.Decision, rj policy.RejectConfig) {
	if g.reject != nil {
		g.reject(w, r, d)
		return
	}
	if rj.RateLimitHeaders {
		SetRateLimitHeaders(w.Header(), d)
	}
	WriteRejection(w, d)
}

// SetRateLimitHeaders sets the IETF draft (draft-ietf-httpapi-ratelimit-
// headers, -07 onward) headers for a refused decision: RateLimit-Policy
// names the refusing rule with its quota (q: the burst of a rate rule, with
// w the seconds it takes to refill; the cap of a connection rule), and
// RateLimit says none remain (r=0) and when to retry (t, seconds).
func SetRateLimitHeaders(h http.Header, d *policy.Decision) {
	c, ok := d.RefusedClaim()
	if !ok {
		return
	}
	var pol string
	switch d.Reason {
	case policy.ReasonRate, policy.ReasonTableFull:
		if c.Limit <= 0 {
			return
		}
		w := int(math.Ceil(float64(c.Burst) / float64(c.Limit)))
		pol = fmt.Sprintf("%q;q=%d;w=%d", c.Rule, c.Burst, max(w, 1))
	case policy.ReasonConnections:
		pol = fmt.Sprintf("%q;q=%d", c.Rule, c.Conns)
	default:
		return
	}
	h.Set("RateLimit-Policy", pol)
	h.Set("RateLimit", fmt.Sprintf("%q;r=0;t=%d", c.Rule, RetryAfterSeconds(d.RetryAfter)))
}

// WriteRejection writes the default response for a refused decision:
// its status (429, 401 or 503), Retry-After in whole seconds rounded up
// (429 and 503), and a small JSON body naming the rule and the reason.
func WriteRejection(w http.ResponseWriter, d *policy.Decision) {
	status := d.Status()
	body := rejectBody{Error: http.StatusText(status), Rule: d.Rule, Reason: d.Reason.String()}
	hdr := w.Header()
	if status != http.StatusUnauthorized {
		secs := RetryAfterSeconds(d.RetryAfter)
		hdr.Set("Retry-After", strconv.Itoa(secs))
		body.RetryAfter = secs
	}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// CloseReason is the close frame reason for a refused decision, within
// the 123 bytes a close frame allows.
func CloseReason(d *policy.Decision) string {
	s := fmt.Sprintf("%s: %s", d.Rule, d.Reason)
	if d.Reason == policy.ReasonRate || d.Reason == policy.ReasonConnections || d.Reason == policy.ReasonBanned {
		s += fmt.Sprintf("; retry in %ds", RetryAfterSeconds(d.RetryAfter))
	}
	if len(s) > 123 {
		s = s[:123]
	}
	return s
}

// closeReject upgrades without taking any slot and closes at once with
// 1013 (or 1008 for a missing identity) and a reason. The caller holds a
// place on the close path (acquireClose), returned when the connection is
// gone.
func (g *Guard) closeReject(w http.ResponseWriter, r *http.Request, d *policy.Decision, h http.Header) {
	c, err := g.checked.Upgrade(w, r, h)
	if err != nil {
		g.releaseClose(d.ClientIP)
		return
	}
	code := CloseTryAgainLater
	if d.Reason == policy.ReasonMissing || d.Reason == policy.ReasonBanned {
		code = ClosePolicyViolation
	}
	deadline := time.Now().Add(closeLinger)
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, CloseReason(d)), deadline)
	go func() {
		defer g.releaseClose(d.ClientIP)
		// Wait briefly for the client's close frame so the reason is not
		// lost to a reset; bounded by closeLinger and by the close-path
		// bounds.
		_ = c.SetReadDeadline(deadline)
		for {
			if _, _, err := c.NextReader(); err != nil {
				break
			}
		}
		c.Close()
	}()
}

// hijackWriter hands gorilla a network connection whose Close releases the
// decision's slots, so that every way a connection ends releases them.
type hijackWriter struct {
	http.ResponseWriter
	nc *releasingConn // wraps the hijacked connection; its d is set
}

func (hw *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := hw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("ws: response does not implement http.Hijacker")
	}
	nc, brw, err := h.Hijack()
	if err != nil {
		return nil, nil, err
	}
	rc := hw.nc
	rc.Conn = nc
	// Last resort: a connection the application never closes is released
	// when it becomes unreachable. The cleanup must not reference rc (nor
	// the Conn it lives in).
	runtime.AddCleanup(rc, releaseUnreachable, held{rc.d, rc.m})
	return rc, brw, nil
}

// releaseUnreachable is the cleanup of a connection that became
// unreachable: it releases the slots unless Close already did, which is
// the usual case and then costs nothing. The release runs on a goroutine
// of its own: a store's Release may block, and cleanups share goroutines.
func releaseUnreachable(h held) {
	if h.d.Holds() {
		go h.d.Release()
	}
	if h.m != nil {
		h.m.Close()
	}
}

// held is what a connection holds: the decision's slots, the meter's
// per-key entries.
type held struct {
	d *policy.Decision
	m *messages.Meter
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (hw *hijackWriter) Unwrap() http.ResponseWriter { return hw.ResponseWriter }

// releasingConn releases the decision's slots (and closes the meter)
// when closed.
type releasingConn struct {
	net.Conn
	d *policy.Decision
	m *messages.Meter // nil without messages limits
	// stamp, when set (Upgrade: gorilla reads only on the reading
	// goroutine), is m: every read stamps its time for the charges of the
	// messages it brought in (one clock read per read, not per message).
	stamp *messages.Meter
}

func (c *releasingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.stamp != nil {
		c.stamp.Stamp()
	}
	return n, err
}

func (c *releasingConn) release() {
	c.d.Release()
	if c.m != nil {
		c.m.Close()
	}
}

// Unwrap returns the network connection underneath, for applications that
// need its concrete type (*net.TCPConn, *tls.Conn). Closing that directly
// bypasses the release; the runtime cleanup still releases eventually.
func (c *releasingConn) Unwrap() net.Conn { return c.Conn }

func (c *releasingConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// sameOrigin is the check gorilla applies when CheckOrigin is nil: no
// Origin header, or an Origin whose host equals the request's Host.
func sameOrigin(r *http.Request) bool {
	origin := r.Header["Origin"]
	if len(origin) == 0 {
		return true
	}
	u, err := url.Parse(origin[0])
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}
