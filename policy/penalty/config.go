package penalty

import (
	"fmt"
	"time"
)

// Defaults applied where a Config leaves a field at zero, and bounds
// (docs/policy.md gives each).
const (
	defaultThreshold = 5
	defaultWindow    = time.Minute
	defaultBan       = time.Minute
	defaultFactor    = 2
	defaultMaxBan    = 24 * time.Hour
	defaultForgive   = 24 * time.Hour
	defaultMaxKeys   = 100000
	defaultMaxBans   = 100000
	// MaxThreshold bounds threshold: an offender's record keeps the times
	// of its last threshold offences.
	MaxThreshold = 64
)

// Config is one penalty as written: an item of a policy's penalties
// section. Package policy parses the key and the refused rules (they name
// the policy's rules); Params checks the rest.
type Config struct {
	// Name identifies the penalty in metrics, logs, the inspector and the
	// admin API; unique within a policy. A reload keeps the state of a
	// penalty whose name and settings are unchanged.
	Name string `yaml:"name" json:"name,omitempty"`
	// Key is what offenders are counted and banned by: ip, subnet,
	// header:NAME, jwt[.CLAIM] or cookie[:NAME], as in rules.
	Key string `yaml:"key" json:"key,omitempty"`
	// IPv4Prefix and IPv6Prefix are the prefix lengths of subnet keys
	// (defaults 24 and 64).
	IPv4Prefix int `yaml:"ipv4_prefix" json:"ipv4_prefix,omitempty"`
	IPv6Prefix int `yaml:"ipv6_prefix" json:"ipv6_prefix,omitempty"`
	// Offences says what counts as an offence; at least one kind.
	Offences Offences `yaml:"offences" json:"offences,omitempty"`
	// Threshold offences within Window earn a ban (defaults 5 and 1m;
	// threshold at most MaxThreshold).
	Threshold int           `yaml:"threshold" json:"threshold,omitempty"`
	Window    time.Duration `yaml:"window" json:"window,omitempty"`
	// Ban is the first ban's length (default 1m); each repeat ban is
	// Factor times the one before (default 2), up to MaxBan (default 24h).
	Ban    time.Duration `yaml:"ban" json:"ban,omitempty"`
	Factor int           `yaml:"factor" json:"factor,omitempty"`
	MaxBan time.Duration `yaml:"max_ban" json:"max_ban,omitempty"`
	// Forgive is the quiet period (no offence, no ban) after which a key's
	// repeat count is forgotten and its next ban is Ban again (default 24h).
	Forgive time.Duration `yaml:"forgive" json:"forgive,omitempty"`
	// MaxKeys bounds the offence table (default 100000): past it the key
	// that offended least recently is forgotten.
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
	// MaxBans bounds the ban table (default 100000). An active ban is never
	// evicted: while the table holds MaxBans active bans, new bans are not
	// issued (counted as dropped) and the offenders stay limited by the
	// rules alone.
	MaxBans int `yaml:"max_bans" json:"max_bans,omitempty"`
	// Mode is "enforce" (default) or "dry_run": log and count would-be
	// bans, refuse nothing.
	Mode string `yaml:"mode" json:"mode,omitempty"`
}

// Offences says what counts as an offence of a penalty.
type Offences struct {
	// Refused lists refusals that count: "RULE" (any reason of that rule),
	// "RULE:REASON" or "*:REASON", with the reasons of refusal bodies
	// (connections, rate, table_full, missing_identity, store_error).
	Refused []string `yaml:"refused" json:"refused,omitempty"`
	// InvalidIdentity counts handshakes whose token is present but fails
	// verification (bad signature, expired, wrong issuer or audience); an
	// absent token is not an offence.
	InvalidIdentity bool `yaml:"invalid_identity" json:"invalid_identity,omitempty"`
	// ShortLived counts admitted connections that close within this time
	// of their admission (reconnect loops); zero is off.
	ShortLived time.Duration `yaml:"short_lived" json:"short_lived,omitempty"`
	// Messages counts message-limit violations, reported for an admitted
	// connection through Offender.Offend(KindMessage).
	Messages bool `yaml:"messages" json:"messages,omitempty"`
}

// Params are a penalty's checked settings with defaults filled in: what a
// Table enforces.
type Params struct {
	Name      string
	Threshold int
	Window    time.Duration
	Ban       time.Duration
	Factor    int
	MaxBan    time.Duration
	Forgive   time.Duration
	MaxKeys   int
	MaxBans   int
	DryRun    bool
}

// Params checks c's numbers and mode and returns them with defaults
// filled in; every problem is reported to bad with the field's name
// (threshold, window, …). dryRun makes the penalty dry whatever its Mode.
func (c Config) Params(dryRun bool, bad func(field, msg string)) Params {
	p := Params{
		Name:      c.Name,
		Threshold: pos(bad, "threshold", c.Threshold, defaultThreshold),
		Window:    pos(bad, "window", c.Window, defaultWindow),
		Ban:       pos(bad, "ban", c.Ban, defaultBan),
		Factor:    pos(bad, "factor", c.Factor, defaultFactor),
		MaxBan:    pos(bad, "max_ban", c.MaxBan, defaultMaxBan),
		Forgive:   pos(bad, "forgive", c.Forgive, defaultForgive),
		MaxKeys:   pos(bad, "max_keys", c.MaxKeys, defaultMaxKeys),
		MaxBans:   pos(bad, "max_bans", c.MaxBans, defaultMaxBans),
		DryRun:    dryRun,
	}
	if p.Threshold > MaxThreshold {
		bad("threshold", fmt.Sprintf("at most %d (got %d)", MaxThreshold, p.Threshold))
	}
	if c.MaxBan != 0 && p.MaxBan < p.Ban {
		bad("max_ban", fmt.Sprintf("must be at least ban (%s)", p.Ban))
	}
	if c.MaxBan == 0 {
		p.MaxBan = max(p.MaxBan, p.Ban)
	}
	switch c.Mode {
	case "", "enforce":
	case "dry_run":
		p.DryRun = true
	default:
		bad("mode", fmt.Sprintf("must be enforce or dry_run (got %q)", c.Mode))
	}
	o := c.Offences
	if len(o.Refused) == 0 && !o.InvalidIdentity && o.ShortLived == 0 && !o.Messages {
		bad("offences", "at least one of refused, invalid_identity, short_lived, messages")
	}
	if o.ShortLived < 0 {
		bad("offences.short_lived", "must not be negative")
	}
	return p
}

func pos[T int | time.Duration](bad func(string, string), field string, n, def T) T {
	switch {
	case n < 0:
		bad(field, "must not be negative")
	case n == 0:
		return def
	}
	return n
}
