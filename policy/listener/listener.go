// Package listener caps TCP connections when they are accepted, before any
// HTTP is read, by the listener section of a policy (Config, compiled by
// package policy into Limits):
// open connections per peer address, per peer subnet and in all, and an
// accept rate. It is the file-descriptor ceiling that the WebSocket rules
// cannot be: those see only upgrade requests, while idle keep-alive
// connections, slowloris requests and plain HTTP hold descriptors too.
//
// A connection over a cap is closed at once with a reset (SO_LINGER 0), so
// it costs the process one accept and no TIME_WAIT; Accept goes on to the
// next connection and never returns such a refusal as an error. An admitted
// connection holds its slots until its Close, however it is used after
// Accept: served by net/http, hijacked for a WebSocket, handed to another
// goroutine. If it is dropped without Close, a runtime cleanup frees its
// slots once it is unreachable.
//
// # Concurrency
//
// A Listener is safe for concurrent use; SetLimits may be called while
// connections are being accepted.
package listener

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy/capacity"
)

// Refusal reasons, as counted in Stats and passed to Options.OnRefuse.
const (
	ReasonPerIP     = "per_ip"
	ReasonPerSubnet = "per_subnet"
	ReasonGlobal    = "global"
	ReasonRate      = "rate"
)

// Config is the listener section of a policy as written (the YAML
// `listener:` mapping; package policy validates it and compiles it into
// Limits, see policy.Policy.Listener). The caps count the TCP peer's
// address: behind a proxy that is the proxy, so connections from
// client_ip.trusted_proxies (and from exempt blocks) skip per_ip and
// per_subnet; they still count under global, the ceiling that protects the
// process's file descriptors.
type Config struct {
	// PerIP caps open connections per peer address; 0 means no cap.
	PerIP int `yaml:"per_ip" json:"per_ip,omitempty"`
	// PerSubnet caps open connections per peer subnet (IPv4Prefix,
	// IPv6Prefix); 0 means no cap.
	PerSubnet int `yaml:"per_subnet" json:"per_subnet,omitempty"`
	// IPv4Prefix is the subnet prefix length for IPv4 peers (default 24).
	IPv4Prefix int `yaml:"ipv4_prefix" json:"ipv4_prefix,omitempty"`
	// IPv6Prefix is the subnet prefix length for IPv6 peers (default 64).
	IPv6Prefix int `yaml:"ipv6_prefix" json:"ipv6_prefix,omitempty"`
	// Global caps open connections in all; 0 means no cap; capacity.Auto
	// (`auto`) derives it from RLIMIT_NOFILE (package policy/capacity).
	Global capacity.Cap `yaml:"global" json:"global,omitempty"`
	// Rate bounds accepted connections, all peers together: "200/s";
	// empty means no rate limit. A connection over it is closed at once.
	Rate string `yaml:"rate" json:"rate,omitempty"`
	// Burst is the accept bucket's size; default max(1, ceil(rate per
	// second)).
	Burst int `yaml:"burst" json:"burst,omitempty"`
}

// Limits is a listener section as a Listener applies it: defaults filled
// in, the rate parsed, and the blocks whose peers skip the per-address
// caps (client_ip.trusted_proxies and exempt). policy.Policy.Listener
// returns a policy's; the zero Limits admit everything.
type Limits struct {
	PerIP, PerSubnet, Global int
	IPv4Prefix, IPv6Prefix   int
	// Rate is accepted connections per second, all peers; 0 means none.
	Rate  rate.Limit
	Burst int
	// Unlimited are the blocks whose peers skip per_ip and per_subnet.
	Unlimited []netip.Prefix
}

// Options configure a Listener. The zero value is usable.
type Options struct {
	// Now is the clock of the accept rate; nil means time.Now.
	Now func() time.Time
	// OnRefuse, when set, is called after a connection was refused and
	// closed, with the peer address and the reason (for logs; it must not
	// block). Keys never become metric labels: count by reason only.
	OnRefuse func(peer netip.Addr, reason string)
}

// Stats is a snapshot of a Listener's counters.
type Stats struct {
	// Live is the number of admitted connections not yet closed.
	Live int
	// Accepted counts admitted connections.
	Accepted uint64
	// Refused counts refused connections by reason.
	Refused map[string]uint64
}

// Listener wraps a net.Listener; see the package documentation.
type Listener struct {
	inner    net.Listener
	now      func() time.Time
	onRefuse func(netip.Addr, string)
	cfg      atomic.Pointer[limits]

	mu       sync.Mutex
	perIP    map[netip.Addr]int   // entries only while > 0
	perNet   map[netip.Prefix]int // entries only while > 0
	live     int
	accepted uint64
	refused  map[string]uint64
}

// limits is the compiled listener section of one policy.
type limits struct {
	perIP, perSubnet, global int
	v4, v6                   int            // subnet prefix lengths
	unlimited                []netip.Prefix // trusted proxies and exempt blocks: no per-address caps
	rate                     *rate.Limiter  // accepts of all peers; nil means no rate
}

// New wraps ln with lim, usually a policy's:
//
//	lim, _ := p.Listener() // the zero Limits when the policy has no listener section
//	l, err := listener.New(ln, lim, listener.Options{})
func New(ln net.Listener, lim Limits, opts Options) (*Listener, error) {
	if ln == nil {
		return nil, errors.New("listener: nil listener")
	}
	l := &Listener{
		inner:    ln,
		now:      opts.Now,
		onRefuse: opts.OnRefuse,
		perIP:    map[netip.Addr]int{},
		perNet:   map[netip.Prefix]int{},
		refused:  map[string]uint64{},
	}
	if l.now == nil {
		l.now = time.Now
	}
	l.SetLimits(lim)
	return l, nil
}

// SetLimits applies lim to connections accepted from now on (a policy
// reload); open connections keep their slots and count against the new
// caps. The accept bucket keeps its tokens if the rate and burst are
// unchanged, and starts full otherwise.
func (l *Listener) SetLimits(pl Limits) {
	lim := &limits{
		perIP: pl.PerIP, perSubnet: pl.PerSubnet, global: pl.Global,
		v4: pl.IPv4Prefix, v6: pl.IPv6Prefix, unlimited: slices.Clone(pl.Unlimited),
	}
	if pl.Rate > 0 {
		lim.rate = rate.NewLimiter(pl.Rate, pl.Burst)
		if old := l.cfg.Load(); old != nil && old.rate != nil && old.rate.Limit() == pl.Rate && old.rate.Burst() == pl.Burst {
			lim.rate = old.rate
		}
	}
	l.cfg.Store(lim)
}

// Accept returns the next connection that every cap admits. Refused
// connections are closed and counted; errors are the inner listener's.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		peer := peerAddr(c)
		s, reason := l.admit(peer)
		if reason == "" {
			return newConn(c, s), nil
		}
		abort(c)
		if l.onRefuse != nil {
			l.onRefuse(peer, reason)
		}
	}
}

// Close closes the inner listener; accepted connections stay open.
func (l *Listener) Close() error { return l.inner.Close() }

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Stats returns a snapshot of the counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{Live: l.live, Accepted: l.accepted, Refused: make(map[string]uint64, len(l.refused))}
	for k, v := range l.refused {
		st.Refused[k] = v
	}
	return st
}

// admit takes a slot under every cap for peer, or none: it returns the
// slot, or the reason of the first cap that refused.
func (l *Listener) admit(peer netip.Addr) (*slot, string) {
	lim := l.cfg.Load()
	s := &slot{l: l, ip: peer}
	capped := peer.IsValid() && !lim.contains(peer)
	if capped && lim.perSubnet > 0 {
		bits := lim.v6
		if peer.Is4() {
			bits = lim.v4
		}
		s.subnet, _ = peer.Prefix(bits)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	reason := ""
	switch {
	case lim.global > 0 && l.live >= lim.global:
		reason = ReasonGlobal
	case capped && lim.perIP > 0 && l.perIP[peer] >= lim.perIP:
		reason = ReasonPerIP
	case s.subnet.IsValid() && l.perNet[s.subnet] >= lim.perSubnet:
		reason = ReasonPerSubnet
	case lim.rate != nil && !lim.rate.AllowN(l.now(), 1): // last: a refused connection spends no token
		reason = ReasonRate
	}
	if reason != "" {
		l.refused[reason]++
		return nil, reason
	}
	l.live++
	l.accepted++
	if capped && lim.perIP > 0 {
		s.counted = true
		l.perIP[peer]++
	}
	if s.subnet.IsValid() {
		l.perNet[s.subnet]++
	}
	return s, ""
}

// release frees what s holds; the caller makes sure it runs once.
func (l *Listener) release(s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live--
	if s.counted {
		if l.perIP[s.ip]--; l.perIP[s.ip] <= 0 {
			delete(l.perIP, s.ip)
		}
	}
	if s.subnet.IsValid() {
		if l.perNet[s.subnet]--; l.perNet[s.subnet] <= 0 {
			delete(l.perNet, s.subnet)
		}
	}
}

func (lim *limits) contains(a netip.Addr) bool {
	for _, p := range lim.unlimited {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// slot is what one admitted connection holds. It is kept apart from the
// connection so that the runtime cleanup can release it once the
// connection is unreachable.
type slot struct {
	l        *Listener
	ip       netip.Addr
	subnet   netip.Prefix // valid when counted per subnet
	counted  bool         // counted per address
	released atomic.Bool
}

func (s *slot) release() {
	if s.released.CompareAndSwap(false, true) {
		s.l.release(s)
	}
}

// conn is an admitted connection: Close releases its slot.
type conn struct {
	net.Conn
	s *slot
}

func newConn(c net.Conn, s *slot) *conn {
	w := &conn{Conn: c, s: s}
	runtime.AddCleanup(w, (*slot).release, s)
	return w
}

// Close closes the connection and frees its slots (once).
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.s.release()
	return err
}

// peerAddr returns the connection's remote address, IPv4-mapped IPv6
// folded to IPv4; invalid when it is not an IP address.
func peerAddr(c net.Conn) netip.Addr {
	var a netip.Addr
	switch ra := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		a, _ = netip.AddrFromSlice(ra.IP)
	default:
		if ap, err := netip.ParseAddrPort(ra.String()); err == nil {
			a = ap.Addr()
		}
	}
	return keys.Normalize(a.WithZone(""))
}

// abort closes a refused connection with a reset where it can: the peer
// learns at once, and this side keeps no TIME_WAIT.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
