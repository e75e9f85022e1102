package policy

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/keys/identity"
)

// Defaults applied by New where a Config leaves a field at its zero value.
const (
	DefaultMaxKeys       = 100000
	DefaultIPv4Prefix    = 24
	DefaultIPv6Prefix    = 64
	DefaultCapRetryAfter = time.Second
	MaxRules             = 32
)

// Mode values.
const (
	ModeEnforce = "enforce"
	ModeDryRun  = "dry_run"
)

// Reject modes.
const (
	RejectStatus = "status" // HTTP 429 / 401 before the upgrade
	RejectClose  = "close"  // upgrade, then close 1013 / 1008 with a reason
	RejectAuto   = "auto"   // close for browsers (Origin present), status otherwise
)

// Defaults of the bounded close path.
const (
	DefaultMaxClosing      = 256
	DefaultMaxClosingPerIP = 16
)

// Error is a policy error that says where the problem is: Path names the
// field ("rules[1].rate"), and File, Line and Column are set when the policy
// came from a file.
type Error struct {
	File   string
	Line   int
	Column int
	Path   string
	Msg    string
	Err    error
}

// Error renders "file:line:col: path: message", or "policy: path: message"
// for a policy built in Go.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" || e.Line > 0 {
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Column)
	} else {
		b.WriteString("policy: ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// KeyKind is what a rule counts by.
type KeyKind uint8

// Rule key kinds.
const (
	KeyIP KeyKind = iota + 1
	KeySubnet
	KeyGlobal
	KeyHeader
	KeyJWT
	KeyCookie
)

// Rule is one compiled rule. Rules are immutable once built.
type Rule struct {
	Name        string
	Kind        KeyKind
	Param       string // header name, JWT claim or cookie name
	IPv4Prefix  int
	IPv6Prefix  int
	Connections int
	Limit       rate.Limit
	Burst       int
	RejectMiss  bool // on_missing: reject
	MaxKeys     int
	Refuse      bool // state.on_full: refuse
	// TierClaim and Tiers choose other limits by a verified JWT claim.
	TierClaim string
	Tiers     map[string]Tier

	claim Claim // the rule's name and limits: its claims without a key
}

// Tier is a compiled tier: the limits a claim value selects.
type Tier struct {
	Connections int
	Limit       rate.Limit
	Burst       int

	claim Claim // the rule's name and the tier's limits
}

// Policy is a validated, compiled policy. It is immutable and safe for
// concurrent use; a reload builds a new Policy.
type Policy struct {
	cfg             Config
	clientIP        *keys.ClientIP
	exempt          []netip.Prefix
	rules           []Rule
	dryRun          bool
	rejectMode      string
	capRetryAfter   time.Duration
	maxClosing      int
	maxClosingPerIP int
	jwt             *identity.JWT
	cookies         map[string]*identity.Cookie // by cookie name
}

// JWT returns the policy's token verifier, nil when identity.jwt is not
// configured.
func (p *Policy) JWT() *identity.JWT { return p.jwt }

// StripTokenProtocols returns h without Sec-WebSocket-Protocol entries that
// carry a token (identity.jwt from: subprotocol), so a token is never
// selected and echoed as the connection's subprotocol; h itself when the
// policy takes no token from the subprotocol.
func (p *Policy) StripTokenProtocols(h http.Header) http.Header {
	if p.jwt == nil {
		return h
	}
	return p.jwt.StripTokenProtocols(h)
}

// Config returns the configuration the policy was built from (with
// defaults not filled in). Callers must not modify its slices.
func (p *Policy) Config() Config { return p.cfg }

// Rules returns the compiled rules in evaluation order. Callers must not
// modify the slice.
func (p *Policy) Rules() []Rule { return p.rules }

// DryRun reports whether the policy only reports what it would reject.
func (p *Policy) DryRun() bool { return p.dryRun }

// RejectMode is RejectStatus, RejectClose or RejectAuto.
func (p *Policy) RejectMode() string { return p.rejectMode }

// MaxClosing bounds refused connections being closed at once (close and
// auto modes), overall and per client address.
func (p *Policy) MaxClosing() (overall, perIP int) { return p.maxClosing, p.maxClosingPerIP }

// RateLimitHeaders reports whether status refusals carry the IETF draft's
// RateLimit-Policy and RateLimit headers.
func (p *Policy) RateLimitHeaders() bool { return p.cfg.Reject.RateLimitHeaders }

// CapRetryAfter is the Retry-After sent when a connection cap refuses.
func (p *Policy) CapRetryAfter() time.Duration { return p.capRetryAfter }

// ClientIP returns the policy's client-address resolver.
func (p *Policy) ClientIP() *keys.ClientIP { return p.clientIP }

// Exempt reports whether addr is in an exempt block.
func (p *Policy) Exempt(addr netip.Addr) bool {
	for _, e := range p.exempt {
		if e.Contains(addr) {
			return true
		}
	}
	return false
}

// validator collects errors that name their path.
type validator struct{ errs []error }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// New validates cfg and compiles it into a Policy. All problems are
// reported together, each as an *Error naming its path.
func New(cfg Config) (*Policy, error) {
	v := &validator{}
	p := &Policy{cfg: cfg}

	if cfg.Version != 1 {
		v.add("version", "must be 1 (got %d)", cfg.Version)
	}

	trusted := parsePrefixes(v, "client_ip.trusted_proxies", cfg.ClientIP.TrustedProxies)
	header := cfg.ClientIP.Header
	if header == "" && len(trusted) > 0 {
		header = "X-Forwarded-For"
	}
	if header != "" && len(trusted) == 0 {
		v.add("client_ip.header", "a forwarding header needs client_ip.trusted_proxies: from an untrusted peer it is the client's word")
	}
	if ci, err := keys.NewClientIP(trusted, header); err != nil {
		v.errs = append(v.errs, &Error{Path: "client_ip.header", Msg: "invalid", Err: err})
	} else {
		p.clientIP = ci
	}
	p.exempt = parsePrefixes(v, "exempt", cfg.Exempt)
	compileIdentity(v, p, cfg.Identity)

	maxKeys := cfg.State.MaxKeys
	switch {
	case maxKeys < 0:
		v.add("state.max_keys", "must not be negative (got %d)", maxKeys)
	case maxKeys == 0:
		maxKeys = DefaultMaxKeys
	}
	refuse := false
	switch cfg.State.OnFull {
	case "", "evict":
	case "refuse":
		refuse = true
	default:
		v.add("state.on_full", "must be evict or refuse (got %q)", cfg.State.OnFull)
	}
	switch cfg.State.Store {
	case "", "memory":
	case "redis":
		validateRedis(v, cfg.State.Redis)
	default:
		v.add("state.store", "must be memory or redis (got %q)", cfg.State.Store)
	}

	switch cfg.Reject.Mode {
	case "", RejectStatus:
		p.rejectMode = RejectStatus
	case RejectClose, RejectAuto:
		p.rejectMode = cfg.Reject.Mode
	default:
		v.add("reject.mode", "must be status, close or auto (got %q)", cfg.Reject.Mode)
	}
	p.maxClosing, p.maxClosingPerIP = cfg.Reject.MaxClosing, cfg.Reject.MaxClosingPerIP
	switch {
	case p.maxClosing < 0:
		v.add("reject.max_closing", "must not be negative")
	case p.maxClosing == 0:
		p.maxClosing = DefaultMaxClosing
	}
	switch {
	case p.maxClosingPerIP < 0:
		v.add("reject.max_closing_per_ip", "must not be negative")
	case p.maxClosingPerIP == 0:
		p.maxClosingPerIP = DefaultMaxClosingPerIP
	}
	p.capRetryAfter = cfg.Reject.CapRetryAfter
	switch {
	case p.capRetryAfter < 0:
		v.add("reject.cap_retry_after", "must not be negative")
	case p.capRetryAfter == 0:
		p.capRetryAfter = DefaultCapRetryAfter
	}

	switch cfg.Mode {
	case "", ModeEnforce:
	case ModeDryRun:
		p.dryRun = true
	default:
		v.add("mode", "must be enforce or dry_run (got %q)", cfg.Mode)
	}

	if len(cfg.Rules) == 0 {
		v.add("rules", "a policy needs at least one rule")
	}
	if len(cfg.Rules) > MaxRules {
		v.add("rules", "at most %d rules (got %d)", MaxRules, len(cfg.Rules))
	}
	names := map[string]int{}
	for i, rc := range cfg.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		r, ok := compileRule(v, path, rc, cfg)
		if !ok {
			continue
		}
		if j, dup := names[r.Name]; dup {
			v.add(path+".name", "duplicate rule name %q (also rules[%d])", r.Name, j)
			continue
		}
		names[r.Name] = i
		if r.MaxKeys == 0 {
			r.MaxKeys = maxKeys
		}
		r.Refuse = refuse
		r.claim = Claim{Rule: r.Name, Conns: r.Connections, Limit: r.Limit, Burst: r.Burst, MaxKeys: r.MaxKeys, RefuseWhenFull: refuse}
		for name, t := range r.Tiers {
			t.claim = r.claim
			t.claim.Conns, t.claim.Limit, t.claim.Burst = t.Connections, t.Limit, t.Burst
			r.Tiers[name] = t
		}
		if r.Kind == KeyCookie {
			if _, ok := p.cookies[r.Param]; !ok {
				p.cookies[r.Param] = newCookie(r.Param, cfg.Identity.Session)
			}
		}
		p.rules = append(p.rules, r)
	}

	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return p, nil
}

func compileRule(v *validator, path string, rc RuleConfig, cfg Config) (Rule, bool) {
	n := len(v.errs)
	r := Rule{Name: rc.Name, Connections: rc.Connections, MaxKeys: rc.MaxKeys}
	if !validName(rc.Name) {
		v.add(path+".name", "must be 1-64 characters of letters, digits, '-', '_' or '.' (got %q)", rc.Name)
	}
	switch k := rc.Key; {
	case k == "ip":
		r.Kind = KeyIP
	case k == "subnet":
		r.Kind = KeySubnet
	case k == "global":
		r.Kind = KeyGlobal
	case strings.HasPrefix(k, "header:"):
		r.Kind, r.Param = KeyHeader, strings.TrimPrefix(k, "header:")
		if r.Param == "" || strings.ContainsAny(r.Param, " \t:") {
			v.add(path+".key", "header:NAME needs a header name (got %q)", k)
		}
	case k == "jwt" || strings.HasPrefix(k, "jwt."):
		r.Kind, r.Param = KeyJWT, strings.TrimPrefix(strings.TrimPrefix(k, "jwt"), ".")
		if cfg.Identity.JWT == nil {
			v.add(path+".key", "key %q needs identity.jwt to be configured", k)
		}
	case k == "cookie" || strings.HasPrefix(k, "cookie:"):
		r.Kind, r.Param = KeyCookie, strings.TrimPrefix(strings.TrimPrefix(k, "cookie"), ":")
		if r.Param == "" && cfg.Identity.Session != nil {
			r.Param = cfg.Identity.Session.Cookie
		}
		if r.Param == "" {
			v.add(path+".key", "key cookie needs a name (cookie:NAME) or identity.session.cookie")
		}
	case k == "":
		v.add(path+".key", "required: ip, subnet, global, header:NAME, jwt[.CLAIM] or cookie[:NAME]")
	default:
		v.add(path+".key", "unknown key %q: want ip, subnet, global, header:NAME, jwt[.CLAIM] or cookie[:NAME]", k)
	}

	r.IPv4Prefix, r.IPv6Prefix = rc.IPv4Prefix, rc.IPv6Prefix
	if r.Kind == KeySubnet {
		if r.IPv4Prefix == 0 {
			r.IPv4Prefix = DefaultIPv4Prefix
		}
		if r.IPv6Prefix == 0 {
			r.IPv6Prefix = DefaultIPv6Prefix
		}
		if r.IPv4Prefix < 1 || r.IPv4Prefix > 32 {
			v.add(path+".ipv4_prefix", "must be between 1 and 32 (got %d)", r.IPv4Prefix)
		}
		if r.IPv6Prefix < 1 || r.IPv6Prefix > 128 {
			v.add(path+".ipv6_prefix", "must be between 1 and 128 (got %d)", r.IPv6Prefix)
		}
	} else if rc.IPv4Prefix != 0 || rc.IPv6Prefix != 0 {
		v.add(path+".ipv4_prefix", "prefix lengths apply only to key: subnet")
	}

	if rc.Connections < 0 {
		v.add(path+".connections", "must not be negative (got %d)", rc.Connections)
	}
	if rc.Rate != "" {
		lim, err := ParseRate(rc.Rate)
		if err != nil {
			v.errs = append(v.errs, &Error{Path: path + ".rate", Msg: err.Error()})
		}
		r.Limit = lim
	}
	switch {
	case rc.Burst < 0:
		v.add(path+".burst", "must not be negative (got %d)", rc.Burst)
	case rc.Burst > 0 && rc.Rate == "":
		v.add(path+".burst", "burst needs a rate")
	case rc.Burst > 0:
		r.Burst = rc.Burst
	case r.Limit > 0:
		r.Burst = max(1, int(math.Ceil(float64(r.Limit))))
	}
	if rc.Connections == 0 && rc.Rate == "" {
		v.add(path, "rule %q limits nothing: set connections, rate, or both", rc.Name)
	}
	switch rc.OnMissing {
	case "", "skip":
	case "reject":
		r.RejectMiss = true
	default:
		v.add(path+".on_missing", "must be skip or reject (got %q)", rc.OnMissing)
	}
	if rc.MaxKeys < 0 {
		v.add(path+".max_keys", "must not be negative (got %d)", rc.MaxKeys)
	}
	if rc.Tiers != nil {
		compileTiers(v, path+".tiers", &r, rc.Tiers, cfg)
	}
	return r, len(v.errs) == n
}

func compileTiers(v *validator, path string, r *Rule, tc *TiersConfig, cfg Config) {
	if cfg.Identity.JWT == nil {
		v.add(path, "tiers need identity.jwt: a tier is chosen by a verified claim")
	}
	if tc.Claim == "" {
		v.add(path+".claim", "required: the JWT claim whose value selects the tier")
	}
	if len(tc.Values) == 0 {
		v.add(path+".values", "at least one tier")
	}
	r.TierClaim = tc.Claim
	r.Tiers = make(map[string]Tier, len(tc.Values))
	for name, t := range tc.Values {
		tp := path + ".values." + name
		tier := Tier{Connections: r.Connections, Limit: r.Limit, Burst: r.Burst}
		switch {
		case t.Connections < 0:
			v.add(tp+".connections", "must not be negative (got %d)", t.Connections)
		case t.Connections > 0:
			if r.Connections == 0 {
				v.add(tp+".connections", "the rule has no connection cap to raise or lower")
			}
			tier.Connections = t.Connections
		}
		if t.Rate != "" {
			if r.Limit == 0 {
				v.add(tp+".rate", "the rule has no rate to change")
			}
			lim, err := ParseRate(t.Rate)
			if err != nil {
				v.errs = append(v.errs, &Error{Path: tp + ".rate", Msg: err.Error()})
			}
			tier.Limit = lim
			if t.Burst == 0 {
				tier.Burst = max(1, int(math.Ceil(float64(lim))))
			}
		}
		switch {
		case t.Burst < 0:
			v.add(tp+".burst", "must not be negative (got %d)", t.Burst)
		case t.Burst > 0:
			if tier.Limit == 0 {
				v.add(tp+".burst", "burst needs a rate")
			}
			tier.Burst = t.Burst
		}
		r.Tiers[name] = tier
	}
}

// compileIdentity builds the token verifier and checks the session
// settings; key files and secrets are read here, so a policy that loads
// has working keys.
func compileIdentity(v *validator, p *Policy, ic IdentityConfig) {
	p.cookies = map[string]*identity.Cookie{}
	if ic.JWT != nil {
		j, err := identity.NewJWT(*ic.JWT)
		if err != nil {
			v.errs = append(v.errs, &Error{Path: "identity.jwt", Msg: "invalid", Err: err})
		}
		p.jwt = j
	}
	if s := ic.Session; s != nil {
		if s.Cookie != "" && !validCookieName(s.Cookie) {
			v.add("identity.session.cookie", "%q is not a cookie name", s.Cookie)
		}
		if s.HMACSecretEnv != "" && s.Verify == nil {
			if len(os.Getenv(s.HMACSecretEnv)) < 32 {
				v.add("identity.session.hmac_secret_env", "environment variable %s must hold a secret of at least 32 bytes", s.HMACSecretEnv)
			}
		}
	}
}

func newCookie(name string, s *SessionConfig) *identity.Cookie {
	c := &identity.Cookie{Name: name}
	if s == nil || (s.Cookie != "" && s.Cookie != name) {
		return c
	}
	switch {
	case s.Verify != nil:
		c.Verify = s.Verify
	case s.HMACSecretEnv != "":
		c.Verify = identity.HMACCookieVerifier([]byte(os.Getenv(s.HMACSecretEnv)))
	}
	return c
}

func validCookieName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return false
		}
	}
	return true
}

func validateRedis(v *validator, rc RedisConfig) {
	if len(rc.Addrs) == 0 {
		v.add("state.redis.addrs", "state.store redis needs at least one address")
	}
	switch rc.OnError {
	case "", "local", "allow", "deny":
	default:
		v.add("state.redis.on_error", "must be local, allow or deny (got %q)", rc.OnError)
	}
	if rc.LeaseTTL < 0 {
		v.add("state.redis.lease_ttl", "must not be negative")
	}
	if rc.Timeout < 0 {
		v.add("state.redis.timeout", "must not be negative")
	}
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// parsePrefixes parses CIDR blocks or single addresses, folding
// IPv4-mapped IPv6 to IPv4.
func parsePrefixes(v *validator, path string, in []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for i, s := range in {
		p, err := ParsePrefix(s)
		if err != nil {
			v.errs = append(v.errs, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Msg: err.Error()})
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix parses a CIDR block ("10.0.0.0/8", "2001:db8::/32") or a
// single address, which becomes a full-length prefix. Host bits must be
// zero, so a typo such as 10.0.0.1/8 is caught.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR block", s)
		}
		a = keys.Normalize(a)
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR block", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed in CIDR blocks", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}

// ParseRate parses a handshake rate: "10/s", "100/m", "5/h", "3/10s",
// "0.5/s". The count must be positive.
func ParseRate(s string) (rate.Limit, error) {
	num, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("rate %q: want COUNT/PERIOD such as 10/s, 100/m, 5/h or 3/10s", s)
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("rate %q: count must be a positive number", s)
	}
	per = strings.TrimSpace(per)
	var d time.Duration
	switch per {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	default:
		d, err = time.ParseDuration(per)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("rate %q: period must be s, m, h or a positive duration such as 10s", s)
		}
	}
	return rate.Limit(n / d.Seconds()), nil
}
