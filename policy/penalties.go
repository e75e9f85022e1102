package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy/penalty"
)

// maxPenalties bounds a policy's penalties: each one is looked up on
// every handshake.
const maxPenalties = 16

// penaltySpec is one compiled penalty: how its key is taken from a
// request (a rule's key machinery), what counts as its offence, and the
// parameters of its table (package penalty).
type penaltySpec struct {
	key        rule // kind, param, prefixes, cookie; key.claim.Rule is the penalty's name
	refused    []refusedMatch
	invalid    bool
	shortLived time.Duration
	messages   bool
	params     penalty.Params
}

// refusedMatch is one entry of offences.refused: a rule name ("" for any)
// and a reason (0 for any).
type refusedMatch struct {
	rule   string
	reason Reason
}

// compilePenalties checks the penalties section against the policy's rules.
func compilePenalties(v *validator, cfg Config, rules []rule, dryRun bool) []penaltySpec {
	if len(cfg.Penalties) > maxPenalties {
		v.add("penalties", "at most %d penalties (got %d)", maxPenalties, len(cfg.Penalties))
	}
	ruleNames := map[string]bool{}
	for _, r := range rules {
		ruleNames[r.claim.Rule] = true
	}
	var out []penaltySpec
	names := map[string]int{}
	for i, pc := range cfg.Penalties {
		path := fmt.Sprintf("penalties[%d]", i)
		n := len(v.errs)
		if !validName(pc.Name) {
			v.add(path+".name", "must be 1-64 characters of letters, digits, '-', '_' or '.' (got %q)", pc.Name)
		} else if j, dup := names[pc.Name]; dup {
			v.add(path+".name", "duplicate penalty name %q (also penalties[%d])", pc.Name, j)
		} else if ruleNames[pc.Name] {
			v.add(path+".name", "%q is also a rule's name: refusals name one or the other", pc.Name)
		}
		names[pc.Name] = i
		s := compilePenalty(v, path, pc, cfg, ruleNames, dryRun)
		if len(v.errs) == n {
			out = append(out, s)
		}
	}
	return out
}

func compilePenalty(v *validator, path string, pc penalty.Config, cfg Config, ruleNames map[string]bool, dryRun bool) penaltySpec {
	s := penaltySpec{invalid: pc.Offences.InvalidIdentity, shortLived: pc.Offences.ShortLived, messages: pc.Offences.Messages}
	s.key.claim.Rule = pc.Name
	s.key.kind, s.key.param = ruleKey(v, path+".key", pc.Key, cfg.Identity)
	if s.key.kind == keyGlobal {
		v.add(path+".key", "a penalty cannot ban the global key: it would refuse everyone")
	}
	s.key.v4, s.key.v6 = rulePrefixes(v, path, RuleConfig{IPv4Prefix: pc.IPv4Prefix, IPv6Prefix: pc.IPv6Prefix}, s.key.kind)
	if s.key.kind == keyCookie {
		s.key.cookie = newCookie(s.key.param, cfg.Identity.Session)
	}
	if s.invalid && cfg.Identity.JWT == nil && !verifiesCookies(cfg) {
		v.add(path+".offences.invalid_identity", "needs identity.jwt or a verified session cookie (identity.session): there is nothing to verify")
	}
	if s.invalid && s.key.kind == keyJWT {
		v.add(path+".offences.invalid_identity", "an invalid token has no verified claim to ban: key it by ip or subnet")
	}
	for j, e := range pc.Offences.Refused {
		m, err := parseRefused(e, ruleNames)
		if err != "" {
			v.add(fmt.Sprintf("%s.offences.refused[%d]", path, j), "%s", err)
		}
		s.refused = append(s.refused, m)
	}
	s.params = pc.Params(dryRun, func(field, msg string) { v.add(path+"."+field, "%s", msg) })
	return s
}

// parseRefused parses "RULE", "RULE:REASON" or "*:REASON".
func parseRefused(e string, ruleNames map[string]bool) (refusedMatch, string) {
	name, reason, hasReason := strings.Cut(e, ":")
	var m refusedMatch
	switch {
	case name == "*" && !hasReason:
		return m, fmt.Sprintf("%q: * needs a reason (*:REASON)", e)
	case name != "*" && !ruleNames[name]:
		return m, fmt.Sprintf("%q: no rule named %q", e, name)
	case name != "*":
		m.rule = name
	}
	if !hasReason {
		return m, ""
	}
	for r := ReasonConnections; r < ReasonBanned; r++ {
		if r.String() == reason {
			m.reason = r
			return m, ""
		}
	}
	return m, fmt.Sprintf("%q: unknown reason %q: want connections, rate, table_full, missing_identity or store_error", e, reason)
}

// offence returns the kind of offence d is for s (0 for none) besides an
// invalid identity.
func (s *penaltySpec) offence(d *Decision) penalty.Kind {
	if d.Reason == 0 || d.Reason == ReasonBanned || (d.Allowed && !d.WouldReject) {
		return 0
	}
	for _, m := range s.refused {
		if (m.rule == "" || m.rule == d.Rule) && (m.reason == 0 || m.reason == d.Reason) {
			return penalty.KindRefused
		}
	}
	return 0
}

// keyOf takes s's key from r (who verifies a token at most once).
func (s *penaltySpec) keyOf(r *http.Request, ip netip.Addr, hasIP bool, who *requestIdentity) (keys.Key, bool) {
	if s.key.byAddress() {
		return s.key.addressKey(r, ip, hasIP)
	}
	return s.key.key(r, who)
}

// verifiesCookies reports whether cfg's session cookies are verified, so
// that a cookie can be present and invalid.
func verifiesCookies(cfg Config) bool {
	s := cfg.Identity.Session
	return s != nil && (s.Verify != nil || s.HMACSecretEnv != "")
}
