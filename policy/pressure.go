package policy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy/capacity"
)

// This file holds the two ways a policy follows the machine: caps derived
// from its capacity (`connections: auto`, package policy/capacity) and
// limits that tighten under measured pressure (the pressure section,
// package policy/pressure). Without either, nothing here runs.

// reasonPressure is the reason of a handshake refused because it carries
// no verified identity while under pressure (refuse_unverified); its rule
// is pressureRule. It is unexported to keep the package's API within its
// budget: callers see it as Reason.String() == "pressure".
const reasonPressure = ReasonBanned + 1

// pressureRule is the rule name of pressure refusals; no rule may take it
// while refuse_unverified is set.
const pressureRule = "pressure"

// pressureActions is a compiled pressure section: what the level does.
type pressureActions struct {
	scale      map[string]bool // rule names whose limits scale
	factor     float64
	unverified bool // refuse handshakes without a verified identity
	keepClaim  string
	keep       map[string]bool // with keepClaim: the tiers admitted under pressure
}

// compilePressure checks the pressure section against the rest of the
// policy and compiles its actions; nil without a section.
func compilePressure(v *validator, cfg Config) *pressureActions {
	pc := cfg.Pressure
	if pc == nil {
		return nil
	}
	for _, pr := range pc.Problems() {
		path := "pressure"
		if pr.Path != "" {
			path += "." + pr.Path
		}
		v.add(path, "%s", pr.Msg)
	}
	a := &pressureActions{unverified: pc.RefuseUnverified}
	if k := pc.KeepTiers; k != nil {
		a.keepClaim, a.keep = k.Claim, map[string]bool{}
		for _, v := range k.Values {
			a.keep[v] = true
		}
	}
	if pc.RefuseUnverified && cfg.Identity.JWT == nil {
		v.add("pressure.refuse_unverified", "needs identity.jwt: an identity is verified by its token")
	}
	for i, rc := range cfg.Rules {
		if pc.RefuseUnverified && rc.Name == pressureRule {
			v.add(fmt.Sprintf("rules[%d].name", i), "%q names pressure refusals while pressure.refuse_unverified is set", pressureRule)
		}
	}
	if sc := pc.Scale; sc != nil {
		a.scale, a.factor = map[string]bool{}, sc.Factor
		for i, name := range sc.Rules {
			if !slices.ContainsFunc(cfg.Rules, func(rc RuleConfig) bool { return rc.Name == name }) {
				v.add(fmt.Sprintf("pressure.scale.rules[%d]", i), "no rule named %q", name)
			}
			a.scale[name] = true
		}
	}
	return a
}

// underPressure applies the pressure actions to a handshake whose claims
// collect returned, when the limiter's monitor reports pressure: it scales
// the chosen rules' claims in place, and refuses a handshake without a
// verified identity (false: the decision is made).
func (l *Limiter) underPressure(d *Decision, p *Policy, r *http.Request, claims []Claim) bool {
	if l.press == nil || l.press.Level() == 0 {
		return true
	}
	a := p.press
	if a.unverified && !d.verified(p, a, r) {
		d.refuse(p, pressureRule, reasonPressure, p.reject.CapRetryAfter)
		if !d.WouldReject {
			return false
		}
	}
	for i := range claims {
		if a.scale[claims[i].Rule] {
			claims[i] = scaleClaim(claims[i], a.factor)
		}
	}
	return true
}

// verified reports whether the request carries a verified token (of a
// kept tier, with keep_tiers), verifying it if no rule did: the identity
// cache makes a repeat cheap.
func (d *Decision) verified(p *Policy, a *pressureActions, r *http.Request) bool {
	if d.Identity != "" && a.keep == nil {
		return true
	}
	if d.InvalidToken || p.jwt == nil {
		return false
	}
	id, err := p.jwt.Identify(r, d.l.now())
	if err != nil || id.Subject == "" {
		return false
	}
	d.Identity = id.Subject
	if a.keep == nil {
		return true
	}
	tier, ok := id.Claim(a.keepClaim)
	return ok && a.keep[tier]
}

// scaleClaim returns c with its limits multiplied by f (0 < f <= 1): a cap
// or burst rounds down but stays at least 1, so a scaled rule still
// admits; live connections above a lowered cap are not closed, new ones
// are refused until the count is below it.
func scaleClaim(c Claim, f float64) Claim {
	if c.Conns > 0 {
		c.Conns = max(1, int(math.Floor(float64(c.Conns)*f)))
	}
	if c.Limit > 0 {
		c.Limit = rate.Limit(float64(c.Limit) * f)
		c.Burst = max(1, int(math.Floor(float64(c.Burst)*f)))
	}
	return c
}

// autoCaps computes `auto` caps once per compiled policy, and remembers
// which fields used them for the log line.
type autoCaps struct {
	cfg  capacity.Config
	read func() capacity.System
	done bool
	res  capacity.Result
	err  error
	used []string // paths of the fields set to auto
}

// newAutoCaps returns the auto caps of a policy with capacity section c
// (nil: the defaults), read from this process when first needed.
func newAutoCaps(c *capacity.Config) *autoCaps {
	a := &autoCaps{read: capacity.ReadSystem}
	if c != nil {
		a.cfg = *c
	}
	return a
}

// conns returns the cap of the field at path written as c: c itself, or
// the auto cap (only where auto is allowed).
func (a *autoCaps) conns(v *validator, path string, c capacity.Cap, allowed bool) int {
	switch {
	case c == capacity.Auto && !allowed:
		v.add(path, "auto is only for caps of the whole process: a global rule or listener.global")
	case c == capacity.Auto:
		if !a.done {
			a.done = true
			a.res, a.err = capacity.Compute(a.cfg, a.read())
		}
		if a.err != nil {
			v.wrap(path, "auto", a.err)
			return 0
		}
		a.used = append(a.used, path)
		return a.res.Conns
	case c < 0:
		v.add(path, "must not be negative (got %d)", c)
	}
	return int(c)
}

// adopt gives the limiter's monitor p's pressure section and logs p's
// auto caps: once per policy the limiter takes.
func (l *Limiter) adopt(p *Policy) {
	if l.press != nil {
		l.press.SetConfig(p.cfg.Pressure)
	}
	if l.log == nil || p.auto == nil || len(p.auto.used) == 0 {
		return
	}
	r := p.auto.res
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "wslimit: connection caps from capacity",
		slog.Any("fields", p.auto.used), slog.Int("connections", r.Conns), slog.String("bound_by", r.BoundBy),
		slog.Uint64("nofile", r.NoFile), slog.Int("fd_reserve", r.Reserve),
		slog.Int64("memory_limit", r.MemoryLimit), slog.Int("memory_per_connection", r.MemoryPerConnection))
}
