package policy

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/keys/identity"
	"github.com/wslimit/wslimit/policy/listener"
)

// Defaults applied by New where a Config leaves a field at its zero value,
// and the bound on rules (docs/policy.md gives each).
const (
	defaultMaxKeys         = 100000
	defaultIPv4Prefix      = 24
	defaultIPv6Prefix      = 64
	defaultCapRetryAfter   = time.Second
	defaultMaxClosing      = 256
	defaultMaxClosingPerIP = 16
	defaultLeaseTTL        = 30 * time.Second // redisstore.DefaultLeaseTTL
	maxRules               = 32
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
		if e.Msg != "" {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// keyKind is what a rule counts by.
type keyKind uint8

const (
	keyIP keyKind = iota + 1
	keySubnet
	keyGlobal
	keyHeader
	keyJWT
	keyCookie
)

// rule is one compiled rule: how its key is taken from a request, and the
// claim (without a key) it puts to the store.
type rule struct {
	claim      Claim // the rule's name and limits, defaults filled in
	kind       keyKind
	param      string           // header name, JWT claim or cookie name
	v4, v6     int              // prefix lengths of subnet keys
	rejectMiss bool             // on_missing: reject
	cookie     *identity.Cookie // for key: cookie
	// tierClaim and tiers choose other limits by a verified JWT claim:
	// tiers maps a claim value to the rule's claim with that tier's limits.
	tierClaim string
	tiers     map[string]Claim
}

// Policy is a validated, compiled policy. It is immutable and safe for
// concurrent use; a reload builds a new Policy.
type Policy struct {
	cfg       Config
	clientIP  *keys.ClientIP
	exempt    []netip.Prefix
	rules     []rule
	dryRun    bool
	reject    RejectConfig // defaults filled in
	jwt       *identity.JWT
	listener  *listener.Limits // nil without a listener section
	penalties []penaltySpec    // penalties.go
	press     *pressureActions // nil without a pressure section
	auto      *autoCaps        // the auto caps computed (pressure.go)
	// verifies is true when a rule's key or limits depend on a verified
	// identity (a jwt or cookie key, or tiers).
	verifies bool
}

// Config returns the configuration the policy was built from (with
// defaults not filled in). Callers must not modify its slices.
func (p *Policy) Config() Config { return p.cfg }

// Rules returns, for each rule in evaluation order, the claim its
// handshakes put to the store, without a key: the rule's name and its
// limits with defaults filled in (tiers not applied).
func (p *Policy) Rules() []Claim {
	out := make([]Claim, len(p.rules))
	for i := range p.rules {
		out[i] = p.rules[i].claim
	}
	return out
}

// Reject returns how the policy answers refused handshakes: the reject
// section with its defaults filled in (Mode is "status", "close" or
// "auto"; MaxClosing, MaxClosingPerIP and CapRetryAfter are positive).
func (p *Policy) Reject() RejectConfig { return p.reject }

// exempted reports whether addr is in an exempt block.
func (p *Policy) exempted(addr netip.Addr) bool {
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

func (v *validator) wrap(path, msg string, err error) {
	v.errs = append(v.errs, &Error{Path: path, Msg: msg, Err: err})
}

// New validates cfg and compiles it into a Policy. All problems are
// reported together, each as an *Error naming its path.
func New(cfg Config) (*Policy, error) {
	v := &validator{}
	p := &Policy{cfg: cfg}
	switch cfg.Version {
	case 1:
	case 0:
		v.add("version", "required: start the policy with version: 1")
	default:
		v.add("version", "must be 1 (got %d)", cfg.Version)
	}
	p.clientIP = compileClientIP(v, cfg.ClientIP)
	p.exempt = parsePrefixes(v, "exempt", cfg.Exempt)
	p.jwt = compileIdentity(v, cfg.Identity)
	defaults := compileState(v, cfg.State)
	p.auto = newAutoCaps(cfg.Capacity)
	defaults.auto = p.auto
	p.reject = compileReject(v, cfg.Reject)
	p.dryRun = compileMode(v, cfg.Mode)
	p.rules = compileRules(v, cfg, defaults)
	for i := range p.rules {
		p.verifies = p.verifies || !p.rules[i].byAddress() || p.rules[i].tiers != nil
	}
	p.penalties = compilePenalties(v, cfg, p.rules, p.dryRun)
	p.listener = compileListener(v, cfg, parsePrefixes(&validator{}, "", cfg.ClientIP.TrustedProxies), p.auto)
	compileMessages(v, cfg)
	p.press = compilePressure(v, cfg)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return p, nil
}

// compileClientIP builds the client-address resolver.
func compileClientIP(v *validator, c ClientIPConfig) *keys.ClientIP {
	trusted := parsePrefixes(v, "client_ip.trusted_proxies", c.TrustedProxies)
	header := c.Header
	if header == "" && len(trusted) > 0 {
		header = "X-Forwarded-For"
	}
	if header != "" && len(trusted) == 0 {
		v.add("client_ip.header", "a forwarding header needs client_ip.trusted_proxies: from an untrusted peer it is the client's word")
	}
	ci, err := keys.NewClientIP(trusted, header)
	if err != nil {
		v.wrap("client_ip.header", "invalid", err)
	}
	return ci
}

// compileIdentity builds the token verifier (nil without identity.jwt) and
// checks the session settings; key files and secrets are read here, so a
// policy that loads has working keys.
func compileIdentity(v *validator, ic IdentityConfig) *identity.JWT {
	var j *identity.JWT
	if ic.JWT != nil {
		var err error
		if j, err = identity.NewJWT(*ic.JWT); err != nil {
			v.wrap(jwtErrorPath(err), "", err)
		}
	}
	if s := ic.Session; s != nil {
		if s.Cookie != "" && !validCookieName(s.Cookie) {
			v.add("identity.session.cookie", "%q is not a cookie name", s.Cookie)
		}
		if s.HMACSecretEnv != "" && s.Verify == nil && len(os.Getenv(s.HMACSecretEnv)) < 32 {
			v.add("identity.session.hmac_secret_env", "environment variable %s must hold a secret of at least 32 bytes", s.HMACSecretEnv)
		}
	}
	return j
}

// jwtErrorPath is the path of the identity.jwt field an identity error
// names ("identity: leeway ...", "identity: from[1]: ..."), so that the
// error points at that field's line; identity.jwt when it names none.
func jwtErrorPath(err error) string {
	msg := strings.TrimPrefix(err.Error(), "identity: ")
	end := strings.IndexAny(msg, ": ")
	if end < 0 {
		return "identity.jwt"
	}
	field := msg[:end]
	name, _, _ := strings.Cut(field, "[")
	t := reflect.TypeFor[identity.JWTConfig]()
	for i := range t.NumField() {
		if tagName(t.Field(i)) == name {
			return "identity.jwt." + field
		}
	}
	return "identity.jwt"
}

// stateDefaults are what the state section gives every rule.
type stateDefaults struct {
	maxKeys int
	refuse  bool
	auto    *autoCaps
}

// compileState checks the state section and returns what it gives rules.
func compileState(v *validator, sc StateConfig) stateDefaults {
	d := stateDefaults{maxKeys: sc.MaxKeys}
	switch {
	case d.maxKeys < 0:
		v.add("state.max_keys", "must not be negative (got %d)", d.maxKeys)
	case d.maxKeys == 0:
		d.maxKeys = defaultMaxKeys
	}
	switch sc.OnFull {
	case "", "evict":
	case "refuse":
		d.refuse = true
	default:
		v.add("state.on_full", "must be evict or refuse (got %q)", sc.OnFull)
	}
	switch sc.Store {
	case "", "memory":
		if !reflect.ValueOf(sc.Redis).IsZero() {
			v.add("state.redis", "has no effect without state.store: redis")
		}
	case "redis":
		sc.Redis.validate(v)
	default:
		v.add("state.store", "must be memory or redis (got %q)", sc.Store)
	}
	return d
}

// compileReject checks the reject section and fills in its defaults.
func compileReject(v *validator, rc RejectConfig) RejectConfig {
	switch rc.Mode {
	case "":
		rc.Mode = "status"
	case "status", "close", "auto":
	default:
		v.add("reject.mode", "must be status, close or auto (got %q)", rc.Mode)
	}
	if rc.Mode == "status" {
		for _, f := range []struct {
			name string
			set  bool
		}{{"max_closing", rc.MaxClosing != 0}, {"max_closing_per_ip", rc.MaxClosingPerIP != 0}} {
			if f.set {
				v.add("reject."+f.name, "has no effect with reject.mode status: it bounds the refusals being closed in close and auto modes")
			}
		}
	}
	rc.MaxClosing = positive(v, "reject.max_closing", rc.MaxClosing, defaultMaxClosing)
	rc.MaxClosingPerIP = positive(v, "reject.max_closing_per_ip", rc.MaxClosingPerIP, defaultMaxClosingPerIP)
	rc.CapRetryAfter = positive(v, "reject.cap_retry_after", rc.CapRetryAfter, defaultCapRetryAfter)
	return rc
}

// positive returns n, or def when n is zero; a negative n is an error.
func positive[T int | time.Duration](v *validator, path string, n, def T) T {
	switch {
	case n < 0:
		v.add(path, "must not be negative")
	case n == 0:
		return def
	}
	return n
}

// compileMode reports whether mode is dry_run.
func compileMode(v *validator, mode string) bool {
	switch mode {
	case "", "enforce":
	case "dry_run":
		return true
	default:
		v.add("mode", "must be enforce or dry_run (got %q)", mode)
	}
	return false
}

// compileRules compiles every rule; rules with errors are left out.
func compileRules(v *validator, cfg Config, defaults stateDefaults) []rule {
	if len(cfg.Rules) == 0 {
		v.add("rules", "a policy needs at least one rule")
	}
	if len(cfg.Rules) > maxRules {
		v.add("rules", "at most %d rules (got %d)", maxRules, len(cfg.Rules))
	}
	var rules []rule
	names := map[string]int{}
	cookies := map[string]*identity.Cookie{} // one per cookie name
	for i, rc := range cfg.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		r, ok := compileRule(v, path, rc, cfg.Identity, defaults)
		if !ok {
			continue
		}
		if j, dup := names[rc.Name]; dup {
			v.add(path+".name", "duplicate rule name %q (also rules[%d])", rc.Name, j)
			continue
		}
		names[rc.Name] = i
		if r.kind == keyCookie {
			if cookies[r.param] == nil {
				cookies[r.param] = newCookie(r.param, cfg.Identity.Session)
			}
			r.cookie = cookies[r.param]
		}
		rules = append(rules, r)
	}
	return rules
}

// compileRule compiles one rule; false when it has errors.
func compileRule(v *validator, path string, rc RuleConfig, ic IdentityConfig, defaults stateDefaults) (rule, bool) {
	n := len(v.errs)
	if !validName(rc.Name) {
		v.add(path+".name", "must be 1-64 characters of letters, digits, '-', '_' or '.' (got %q)", rc.Name)
	}
	r := rule{claim: Claim{Rule: rc.Name, MaxKeys: rc.MaxKeys, RefuseWhenFull: defaults.refuse}}
	r.kind, r.param = ruleKey(v, path+".key", rc.Key, ic)
	r.v4, r.v6 = rulePrefixes(v, path, rc, r.kind)
	r.claim.Conns = defaults.auto.conns(v, path+".connections", rc.Connections, r.kind == keyGlobal)
	r.claim.Limit, r.claim.Burst = ruleRate(v, path, rc)
	if rc.Connections == 0 && rc.Rate == "" {
		v.add(path, "rule %q limits nothing: set connections, rate, or both", rc.Name)
	}
	switch rc.OnMissing {
	case "", "skip":
	case "reject":
		r.rejectMiss = true
	default:
		v.add(path+".on_missing", "must be skip or reject (got %q)", rc.OnMissing)
	}
	switch {
	case rc.MaxKeys < 0:
		v.add(path+".max_keys", "must not be negative (got %d)", rc.MaxKeys)
	case rc.MaxKeys == 0:
		r.claim.MaxKeys = defaults.maxKeys
	case rc.Rate == "":
		v.add(path+".max_keys", "has no effect without a rate: max_keys bounds the rule's token buckets")
	}
	if rc.Tiers != nil {
		r.tierClaim, r.tiers = compileTiers(v, path+".tiers", r.claim, rc.Tiers, ic)
	}
	return r, len(v.errs) == n
}

// ruleKey parses a rule's key: its kind and parameter.
func ruleKey(v *validator, path, k string, ic IdentityConfig) (keyKind, string) {
	switch {
	case k == "ip":
		return keyIP, ""
	case k == "subnet":
		return keySubnet, ""
	case k == "global":
		return keyGlobal, ""
	case strings.HasPrefix(k, "header:"):
		name := strings.TrimPrefix(k, "header:")
		if name == "" || strings.ContainsAny(name, " \t:") {
			v.add(path, "header:NAME needs a header name (got %q)", k)
		}
		return keyHeader, name
	case k == "jwt" || strings.HasPrefix(k, "jwt."):
		if ic.JWT == nil {
			v.add(path, "key %q needs identity.jwt to be configured", k)
		}
		return keyJWT, strings.TrimPrefix(strings.TrimPrefix(k, "jwt"), ".")
	case k == "cookie" || strings.HasPrefix(k, "cookie:"):
		name := strings.TrimPrefix(strings.TrimPrefix(k, "cookie"), ":")
		if name == "" && ic.Session != nil {
			name = ic.Session.Cookie
		}
		if name == "" {
			v.add(path, "key cookie needs a name (cookie:NAME) or identity.session.cookie")
		}
		return keyCookie, name
	case k == "":
		v.add(path, "required: ip, subnet, global, header:NAME, jwt[.CLAIM] or cookie[:NAME]")
	default:
		v.add(path, "unknown key %q: want ip, subnet, global, header:NAME, jwt[.CLAIM] or cookie[:NAME]", k)
	}
	return 0, ""
}

// rulePrefixes returns the prefix lengths of a subnet rule's keys.
func rulePrefixes(v *validator, path string, rc RuleConfig, kind keyKind) (v4, v6 int) {
	if kind != keySubnet {
		if rc.IPv4Prefix != 0 {
			v.add(path+".ipv4_prefix", "prefix lengths apply only to key: subnet (this rule's key is %q)", rc.Key)
		}
		if rc.IPv6Prefix != 0 {
			v.add(path+".ipv6_prefix", "prefix lengths apply only to key: subnet (this rule's key is %q)", rc.Key)
		}
		return rc.IPv4Prefix, rc.IPv6Prefix
	}
	v4, v6 = orDefault(rc.IPv4Prefix, defaultIPv4Prefix), orDefault(rc.IPv6Prefix, defaultIPv6Prefix)
	if v4 < 1 || v4 > 32 {
		v.add(path+".ipv4_prefix", "must be between 1 and 32 (got %d)", v4)
	}
	if v6 < 1 || v6 > 128 {
		v.add(path+".ipv6_prefix", "must be between 1 and 128 (got %d)", v6)
	}
	return v4, v6
}

// orDefault returns n, or def when n is zero.
func orDefault(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// ruleRate parses a rule's rate and burst (by default the rate per second,
// rounded up, at least 1).
func ruleRate(v *validator, path string, rc RuleConfig) (rate.Limit, int) {
	var lim rate.Limit
	if rc.Rate != "" {
		var err error
		if lim, err = parseRate(rc.Rate); err != nil {
			v.errs = append(v.errs, &Error{Path: path + ".rate", Msg: err.Error()})
		}
	}
	switch {
	case rc.Burst < 0:
		v.add(path+".burst", "must not be negative (got %d)", rc.Burst)
	case rc.Burst > 0 && rc.Rate == "":
		v.add(path+".burst", "burst needs a rate")
	case rc.Burst > 0:
		return lim, rc.Burst
	case lim > 0:
		return lim, defaultBurst(lim)
	}
	return lim, 0
}

// defaultBurst is a bucket's size when the policy names none.
func defaultBurst(lim rate.Limit) int { return max(1, int(math.Ceil(float64(lim)))) }

// compileTiers compiles a rule's tiers: base (the rule's claim) with each
// tier's limits.
func compileTiers(v *validator, path string, base Claim, tc *TiersConfig, ic IdentityConfig) (string, map[string]Claim) {
	if ic.JWT == nil {
		v.add(path, "tiers need identity.jwt: a tier is chosen by a verified claim")
	}
	if tc.Claim == "" {
		v.add(path+".claim", "required: the JWT claim whose value selects the tier")
	}
	if len(tc.Values) == 0 {
		v.add(path+".values", "at least one tier")
	}
	tiers := make(map[string]Claim, len(tc.Values))
	for name, t := range tc.Values {
		tiers[name] = compileTier(v, path+".values."+name, base, t)
	}
	return tc.Claim, tiers
}

// compileTier returns base with the limits of tier t.
func compileTier(v *validator, path string, base Claim, t TierConfig) Claim {
	c := base
	switch {
	case t.Connections < 0:
		v.add(path+".connections", "must not be negative (got %d)", t.Connections)
	case t.Connections > 0:
		if base.Conns == 0 {
			v.add(path+".connections", "the rule has no connection cap to raise or lower")
		}
		c.Conns = t.Connections
	}
	if t.Rate != "" {
		if base.Limit == 0 {
			v.add(path+".rate", "the rule has no rate to change")
		}
		lim, err := parseRate(t.Rate)
		if err != nil {
			v.errs = append(v.errs, &Error{Path: path + ".rate", Msg: err.Error()})
		}
		c.Limit = lim
		if t.Burst == 0 {
			c.Burst = defaultBurst(lim)
		}
	}
	switch {
	case t.Burst < 0:
		v.add(path+".burst", "must not be negative (got %d)", t.Burst)
	case t.Burst > 0:
		if c.Limit == 0 {
			v.add(path+".burst", "burst needs a rate")
		}
		c.Burst = t.Burst
	}
	return c
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

// Validate checks a redis section as New checks that of a policy whose
// state.store is redis, and reports every problem as an *Error naming its
// path. It is the one definition of the values on_error accepts: stores
// built from a RedisConfig call it rather than check again.
func (rc RedisConfig) Validate() error {
	v := &validator{}
	rc.validate(v)
	return errors.Join(v.errs...)
}

func (rc RedisConfig) validate(v *validator) {
	if len(rc.Addrs) == 0 {
		v.add("state.redis.addrs", "state.store redis needs at least one address")
	}
	switch rc.OnError {
	case "", "local", "allow", "deny":
	default:
		v.add("state.redis.on_error", "must be local, allow or deny (got %q)", rc.OnError)
	}
	ttl := positive(v, "state.redis.lease_ttl", rc.LeaseTTL, defaultLeaseTTL)
	if ttl > 0 && ttl < time.Millisecond {
		v.add("state.redis.lease_ttl", "must be at least 1ms (got %v)", ttl)
	}
	positive(v, "state.redis.timeout", rc.Timeout, 0)
	positive(v, "state.redis.breaker_failures", rc.BreakerFailures, 0)
	positive(v, "state.redis.breaker_cooldown", rc.BreakerCooldown, 0)
	refresh := positive(v, "state.redis.refresh_interval", rc.RefreshInterval, 0)
	if refresh > 0 && ttl > 0 && refresh >= ttl {
		which := "lease_ttl"
		if rc.LeaseTTL == 0 {
			which = "the default lease_ttl"
		}
		v.add("state.redis.refresh_interval", "must be below %s %v (got %v): a lease must be renewed before it expires", which, ttl, refresh)
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
		p, err := parsePrefix(s)
		if err != nil {
			v.errs = append(v.errs, &Error{Path: fmt.Sprintf("%s[%d]", path, i), Msg: err.Error()})
			continue
		}
		out = append(out, p)
	}
	return out
}

// parsePrefix parses a CIDR block ("10.0.0.0/8", "2001:db8::/32") or a
// single address, which becomes a full-length prefix. Host bits must be
// zero, so a typo such as 10.0.0.1/8 is caught.
func parsePrefix(s string) (netip.Prefix, error) {
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

// parseRate parses a handshake rate: "10/s", "100/m", "5/h", "3/10s",
// "0.5/s". The count must be positive.
func parseRate(s string) (rate.Limit, error) {
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
