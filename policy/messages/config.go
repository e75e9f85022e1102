package messages

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Defaults and bounds of the messages section (docs/policy.md).
const (
	defaultMaxKeys = 100000
	maxLimits      = 16
	maxNameLen     = 64
)

// Config is the messages section of a policy as written (the YAML
// `messages:` mapping). Package policy validates it with Compile when the
// policy loads; the guard compiles it again into Limits.
type Config struct {
	// MaxSize bounds one message in bytes; a larger message closes the
	// connection with 1009 (whatever the action). 0 means no bound.
	MaxSize int `yaml:"max_size" json:"max_size,omitempty"`
	// Action is what the limits do by default when exceeded: "throttle"
	// (default: stop reading until tokens return) or "close" (1008).
	Action string `yaml:"action" json:"action,omitempty"`
	// MaxKeys bounds the per-key entries (keys with a live connection on
	// this instance), all limits together (default 100000).
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
	// Limits are enforced together on every message.
	Limits []LimitConfig `yaml:"limits" json:"limits,omitempty"`
}

// LimitConfig is one message limit as written.
type LimitConfig struct {
	// Name identifies the limit in close reasons, metrics and violations.
	Name string `yaml:"name" json:"name,omitempty"`
	// Per is "connection" (default: each connection on its own) or
	// "rule:NAME": all live connections on this instance that the rule
	// NAME gave the same key share the limit.
	Per string `yaml:"per" json:"per,omitempty"`
	// Rate is messages per period ("50/s", "600/m", "5/10s"); empty
	// means no message limit.
	Rate string `yaml:"rate" json:"rate,omitempty"`
	// Burst is the message bucket size; default max(1, ceil(rate per
	// second)).
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// Bytes is inbound bytes per period, with an optional binary unit:
	// "65536/s", "256KiB/s", "1MiB/s"; empty means no byte limit.
	Bytes string `yaml:"bytes" json:"bytes,omitempty"`
	// BytesBurst is the byte bucket size; default max(ceil(bytes per
	// second), max_size).
	BytesBurst int `yaml:"bytes_burst" json:"bytes_burst,omitempty"`
	// Action overrides the section's action for this limit.
	Action string `yaml:"action" json:"action,omitempty"`
}

// Error is a problem in the messages section. Path names the field
// ("messages.limits[0].rate"); package policy adds file:line:col.
type Error struct {
	Path string
	Msg  string
}

// Error renders "messages: path: message".
func (e *Error) Error() string { return "messages: " + e.Path + ": " + e.Msg }

// Limits is a compiled messages section: immutable, shared by the
// meters of a Table.
type Limits struct {
	maxSize int
	dryRun  bool
	maxKeys int
	limits  []limit
	// chunk bounds the bytes a streaming reader reads between two
	// charges: the smallest byte burst, at most 16 KiB.
	chunk int
}

// limit is one compiled limit.
type limit struct {
	name      string
	rule      string // "" for per connection
	close     bool
	msgRate   float64 // tokens per second; 0 means none
	msgBurst  float64
	byteRate  float64
	byteBurst float64
	// msgRateNs and byteRateNs are the rates per nanosecond.
	msgRateNs, byteRateNs float64
	// reasons are the close reasons, built once.
	msgReason, byteReason string
}

// Compile validates c and compiles it. rules are the names of the
// policy's rules (the keys "per: rule:NAME" may use); dryRun is the
// policy's mode: a dry-run meter reports and never throttles or closes.
// Every problem is reported, each as an *Error, joined with errors.Join.
func Compile(c Config, rules []string, dryRun bool) (*Limits, error) {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	l := &Limits{maxSize: c.MaxSize, dryRun: dryRun, maxKeys: c.MaxKeys, chunk: 16 << 10}
	if c.MaxSize < 0 {
		add("messages.max_size", "must not be negative (got %d)", c.MaxSize)
	}
	switch {
	case c.MaxKeys < 0:
		add("messages.max_keys", "must not be negative (got %d)", c.MaxKeys)
	case c.MaxKeys == 0:
		l.maxKeys = defaultMaxKeys
	}
	def, ok := parseAction(c.Action)
	if !ok {
		add("messages.action", "must be throttle or close (got %q)", c.Action)
	}
	if c.MaxSize == 0 && len(c.Limits) == 0 {
		add("messages", "limits nothing: set max_size, limits, or both, or leave the section out")
	}
	if len(c.Limits) > maxLimits {
		add("messages.limits", "at most %d limits (got %d)", maxLimits, len(c.Limits))
	}
	names := map[string]int{}
	for i, lc := range c.Limits {
		path := fmt.Sprintf("messages.limits[%d]", i)
		if j, dup := names[lc.Name]; dup {
			add(path+".name", "duplicate limit name %q (also messages.limits[%d])", lc.Name, j)
		}
		names[lc.Name] = i
		lim, lerrs := compileLimit(path, lc, def, c.MaxSize, rules)
		errs = append(errs, lerrs...)
		l.limits = append(l.limits, lim)
		if lim.byteBurst > 0 {
			l.chunk = min(l.chunk, int(lim.byteBurst))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return l, nil
}

// compileLimit compiles one limit; def is the section's action.
func compileLimit(path string, lc LimitConfig, def bool, maxSize int, rules []string) (limit, []error) {
	var errs []error
	add := func(p, format string, args ...any) {
		errs = append(errs, &Error{Path: path + p, Msg: fmt.Sprintf(format, args...)})
	}
	l := limit{name: lc.Name, close: def}
	if !validName(lc.Name) {
		add(".name", "must be 1-64 characters of letters, digits, '-', '_' or '.' (got %q)", lc.Name)
	}
	switch {
	case lc.Per == "" || lc.Per == "connection":
	case strings.HasPrefix(lc.Per, "rule:"):
		l.rule = strings.TrimPrefix(lc.Per, "rule:")
		if !contains(rules, l.rule) {
			add(".per", "no rule named %q in rules", l.rule)
		}
	default:
		add(".per", "must be connection or rule:NAME (got %q)", lc.Per)
	}
	if lc.Action != "" {
		var ok bool
		if l.close, ok = parseAction(lc.Action); !ok {
			add(".action", "must be throttle or close (got %q)", lc.Action)
		}
	}
	var err error
	if l.msgRate, l.msgBurst, err = rateBurst(lc.Rate, lc.Burst, false, 0); err != nil {
		add(err.(*Error).Path, "%s", err.(*Error).Msg)
	}
	if l.byteRate, l.byteBurst, err = rateBurst(lc.Bytes, lc.BytesBurst, true, maxSize); err != nil {
		add(err.(*Error).Path, "%s", err.(*Error).Msg)
	}
	if lc.Rate == "" && lc.Bytes == "" {
		add("", "limit %q limits nothing: set rate, bytes, or both", lc.Name)
	}
	l.msgRateNs, l.byteRateNs = l.msgRate/1e9, l.byteRate/1e9
	l.msgReason = closeReason(l.name+": messages over "+lc.Rate, lc.Burst)
	l.byteReason = closeReason(l.name+": bytes over "+lc.Bytes, lc.BytesBurst)
	return l, errs
}

// rateBurst parses a rate and its burst; the error's Path is the field
// relative to the limit.
func rateBurst(s string, burst int, bytes bool, maxSize int) (float64, float64, error) {
	rf, bf := ".rate", ".burst"
	if bytes {
		rf, bf = ".bytes", ".bytes_burst"
	}
	switch {
	case burst < 0:
		return 0, 0, &Error{Path: bf, Msg: fmt.Sprintf("must not be negative (got %d)", burst)}
	case s == "" && burst > 0:
		return 0, 0, &Error{Path: bf, Msg: "a burst needs a rate"}
	case s == "":
		return 0, 0, nil
	}
	r, err := parseRate(s, bytes)
	if err != nil {
		return 0, 0, &Error{Path: rf, Msg: err.Error()}
	}
	if burst == 0 {
		burst = max(1, int(math.Ceil(r)))
		if bytes {
			burst = max(burst, maxSize)
		}
	}
	return r, float64(burst), nil
}

func closeReason(s string, burst int) string {
	if burst > 0 {
		s += " burst " + strconv.Itoa(burst)
	}
	if len(s) > 123 {
		s = s[:123]
	}
	return s
}

// parseAction reports whether action is close; false when it is not
// throttle, close or empty.
func parseAction(a string) (closing, ok bool) {
	switch a {
	case "", "throttle":
		return false, true
	case "close":
		return true, true
	}
	return false, false
}

// units are the binary suffixes a byte count may carry.
var units = []struct {
	suffix string
	mult   float64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}

// parseRate parses COUNT/PERIOD into tokens per second: "50/s", "600/m",
// "5/h", "3/10s"; with bytes, COUNT may end in B, KiB, MiB or GiB.
func parseRate(s string, bytes bool) (float64, error) {
	num, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("rate %q: want COUNT/PERIOD such as 50/s, 600/m or 3/10s", s)
	}
	num, mult := strings.TrimSpace(num), 1.0
	if bytes {
		for _, u := range units {
			if strings.HasSuffix(num, u.suffix) {
				num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
				break
			}
		}
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("rate %q: count must be a positive number", s)
	}
	var d time.Duration
	switch per = strings.TrimSpace(per); per {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	default:
		if d, err = time.ParseDuration(per); err != nil || d <= 0 {
			return 0, fmt.Errorf("rate %q: period must be s, m, h or a positive duration such as 10s", s)
		}
	}
	return n * mult / d.Seconds(), nil
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
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
