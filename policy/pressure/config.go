package pressure

import (
	"fmt"
	"time"
)

// Defaults of a pressure section (docs/policy.md gives each).
const (
	DefaultInterval = time.Second
	defaultEnter    = 0.9
	defaultLeave    = 0.8
	minInterval     = 10 * time.Millisecond
)

// Config is a policy's pressure section as written.
type Config struct {
	// Interval is how often the signals are sampled (default 1s, at
	// least 10ms).
	Interval time.Duration `yaml:"interval" json:"interval,omitempty"`
	// Connections compares live connections (Options.Connections) with
	// Cap.
	Connections *Signal `yaml:"connections" json:"connections,omitempty"`
	// FDs compares open file descriptors with RLIMIT_NOFILE.
	FDs *Signal `yaml:"fds" json:"fds,omitempty"`
	// Heap compares Go memory (what GOMEMLIMIT counts: all memory the
	// runtime holds minus what it released to the OS) with GOMEMLIMIT.
	Heap *Signal `yaml:"heap" json:"heap,omitempty"`
	// Scale lowers chosen rules' limits while under pressure.
	Scale *Scale `yaml:"scale" json:"scale,omitempty"`
	// RefuseUnverified refuses, while under pressure, every handshake
	// without a verified JWT (identity.jwt) before any store call: the
	// capacity left is kept for identified users.
	RefuseUnverified bool `yaml:"refuse_unverified" json:"refuse_unverified,omitempty"`
	// KeepTiers narrows RefuseUnverified to chosen tiers: a verified
	// token is admitted under pressure only when its claim Claim has one
	// of Values. Needs RefuseUnverified.
	KeepTiers *KeepTiers `yaml:"keep_tiers" json:"keep_tiers,omitempty"`
	// TightenPenalties halves the penalties' thresholds while under
	// pressure: the Limiter reads Monitor.TightenPenalties at each
	// handshake it judges and sets the engine's threshold factor.
	TightenPenalties bool `yaml:"tighten_penalties" json:"tighten_penalties,omitempty"`
}

// Signal is one signal's thresholds, as fractions of its ceiling.
type Signal struct {
	// Cap is the ceiling of the connections signal (required there; not
	// allowed on fds and heap, whose ceilings are the system's).
	Cap int `yaml:"cap" json:"cap,omitempty"`
	// Enter turns the signal on when its ratio reaches it (default 0.9).
	Enter float64 `yaml:"enter" json:"enter,omitempty"`
	// Leave turns it off when its ratio falls below it (default 0.8);
	// below Enter.
	Leave float64 `yaml:"leave" json:"leave,omitempty"`
}

// Scale multiplies the limits of the named rules by Factor while under
// pressure: a connection cap N becomes max(1, floor(N*Factor)), a rate R
// becomes R*Factor and a burst B max(1, floor(B*Factor)); tiers of those
// rules are scaled the same way.
type Scale struct {
	// Rules names the rules to scale (at least one).
	Rules []string `yaml:"rules" json:"rules,omitempty"`
	// Factor is in (0, 1].
	Factor float64 `yaml:"factor" json:"factor,omitempty"`
}

// KeepTiers names the tiers whose verified users keep being admitted
// under pressure.
type KeepTiers struct {
	// Claim is the JWT claim whose string value is the tier.
	Claim string `yaml:"claim" json:"claim,omitempty"`
	// Values are the tiers kept.
	Values []string `yaml:"values" json:"values,omitempty"`
}

// Problem is one thing wrong with a Config: the field's path inside the
// section ("fds.leave") and what is wrong.
type Problem struct {
	Path, Msg string
}

// Problems checks c and returns every problem found. Checks that need
// the rest of the policy (rule names, identity.jwt) are package policy's.
func (c *Config) Problems() []Problem {
	var out []Problem
	add := func(path, format string, args ...any) {
		out = append(out, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Interval != 0 && c.Interval < minInterval {
		add("interval", "must be at least %s (got %s)", minInterval, c.Interval)
	}
	if c.Connections == nil && c.FDs == nil && c.Heap == nil {
		add("", "no signal: give connections, fds or heap, or leave the section out")
	}
	if c.Scale == nil && !c.RefuseUnverified && !c.TightenPenalties {
		add("", "no action: give scale, refuse_unverified or tighten_penalties, or leave the section out")
	}
	for _, s := range []struct {
		name string
		sig  *Signal
	}{{"connections", c.Connections}, {"fds", c.FDs}, {"heap", c.Heap}} {
		if s.sig != nil {
			s.sig.problems(s.name, add)
		}
	}
	if k := c.KeepTiers; k != nil {
		if !c.RefuseUnverified {
			add("keep_tiers", "needs refuse_unverified: true")
		}
		if k.Claim == "" {
			add("keep_tiers.claim", "required: the JWT claim whose value is the tier")
		}
		if len(k.Values) == 0 {
			add("keep_tiers.values", "name at least one tier")
		}
	}
	if c.Scale != nil {
		if len(c.Scale.Rules) == 0 {
			add("scale.rules", "name at least one rule")
		}
		if !(c.Scale.Factor > 0 && c.Scale.Factor <= 1) {
			add("scale.factor", "must be in (0, 1] (got %g)", c.Scale.Factor)
		}
	}
	return out
}

func (s *Signal) problems(name string, add func(path, format string, args ...any)) {
	switch {
	case name == "connections" && s.Cap <= 0:
		add(name+".cap", "must be positive: the connection count the ratios are fractions of")
	case name != "connections" && s.Cap != 0:
		add(name+".cap", "only the connections signal takes a cap; %s is measured against the system's limit", name)
	}
	enter, leave := s.thresholds()
	if !(enter > 0 && enter <= 1) {
		add(name+".enter", "must be in (0, 1] (got %g)", enter)
	}
	if !(leave >= 0 && leave < enter) {
		add(name+".leave", "must be at least 0 and below enter %g (got %g)", enter, leave)
	}
}

// thresholds returns the signal's enter and leave with defaults filled in.
func (s *Signal) thresholds() (enter, leave float64) {
	enter, leave = s.Enter, s.Leave
	if enter == 0 {
		enter = defaultEnter
	}
	if leave == 0 {
		leave = min(defaultLeave, enter*defaultLeave/defaultEnter)
	}
	return enter, leave
}

// interval returns the sampling interval with its default filled in.
func (c *Config) interval() time.Duration {
	if c == nil || c.Interval == 0 {
		return DefaultInterval
	}
	return max(c.Interval, minInterval)
}
