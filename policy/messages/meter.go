package messages

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/wslimit/wslimit/keys"
)

// Close codes a Result may carry.
const (
	ClosePolicyViolation = 1008 // a message or byte limit with action close
	CloseMessageTooBig   = 1009 // a message over max_size
)

// Reasons and actions of a Violation (and the labels of the metrics).
const (
	ReasonMessages = "messages"
	ReasonBytes    = "bytes"
	ReasonSize     = "size"

	ActionThrottle = "throttle"
	ActionClose    = "close"
	ActionDryRun   = "dry_run"
)

// sizeLimit names the max_size bound in violations and metrics.
const sizeLimit = "max_size"

// Result is what a charge calls for. The zero Result means go on.
type Result struct {
	// Wait is how long to read nothing more from the connection
	// (throttle: the peer's sends back up into TCP); 0 means go on.
	Wait time.Duration
	// Code, when not 0, says to close the connection with this close code
	// (ClosePolicyViolation or CloseMessageTooBig) and Reason.
	Code   int
	Reason string
}

// Violation reports a charge over a limit: for metrics and for penalties
// (an offence), given to TableOptions.OnViolation.
type Violation struct {
	// Limit is the limit's name ("max_size" for the size bound).
	Limit string
	// Reason is ReasonMessages, ReasonBytes or ReasonSize; Action is
	// ActionThrottle, ActionClose or ActionDryRun (a dry-run policy: the
	// limit would have acted).
	Reason, Action string
	// Rule and Key are the rule and key of a per-key limit ("" and the
	// zero Key per connection).
	Rule string
	Key  keys.Key
	// ClientIP is the connection's client address.
	ClientIP netip.Addr
	// Wait is the throttle's delay.
	Wait time.Duration
}

// TableOptions configure a Table; the zero value is usable.
type TableOptions struct {
	// Now is the clock; nil means the monotonic clock.
	Now func() time.Time
	// OnViolation, when set, is called with every charge over a limit,
	// after the meter's locks are released, on the reading goroutine. It
	// must be cheap and must not block.
	OnViolation func(Violation)
}

// Table holds the limits and the per-key state of the meters of one
// guard. A per-key entry exists while a connection of its key holds it
// and is dropped with the last one; entries are bounded by max_keys
// (LRU). It is safe for concurrent use; SetLimits may be called while
// meters are in use, and applies to them at their next charge.
type Table struct {
	lim         atomic.Pointer[Limits]
	base        time.Time
	now         func() time.Time
	onViolation func(Violation)

	mu   sync.Mutex // guards keys, the refs of its entries, meters' held, counters writes
	keys *simplelru.LRU[keyID, *shared]

	ctrs atomic.Pointer[map[string]*counters] // copy-on-write, by limit name
}

// keyID names a per-key entry.
type keyID struct {
	limit string
	key   keys.Key
}

// shared is the state of one key of one per-key limit.
type shared struct {
	mu   sync.Mutex
	pair pair
	refs int // guarded by Table.mu
	id   keyID
}

// NewTable returns a table enforcing l (nil: no limits until SetLimits).
func NewTable(l *Limits, opts TableOptions) *Table {
	t := &Table{base: time.Now(), now: opts.Now, onViolation: opts.OnViolation}
	if t.now != nil {
		t.base = t.now()
	}
	size := defaultMaxKeys
	if l != nil {
		size = l.maxKeys
	}
	t.keys, _ = simplelru.NewLRU[keyID, *shared](size, nil) // size > 0
	m := map[string]*counters{}
	t.ctrs.Store(&m)
	t.SetLimits(l)
	return t
}

// SetLimits replaces the limits; nil removes them. Live meters apply the
// new limits at their next charge, keeping the tokens of limits that keep
// their name (at most the new burst).
func (t *Table) SetLimits(l *Limits) {
	if l != nil {
		t.mu.Lock()
		t.keys.Resize(l.maxKeys)
		t.mu.Unlock()
	}
	t.lim.Store(l)
}

// Limited reports whether the table has limits: without them Open
// returns nil, and a caller can skip building its keyOf.
func (t *Table) Limited() bool { return t.lim.Load() != nil }

// Keys returns the number of per-key entries.
func (t *Table) Keys() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.keys.Len()
}

func (t *Table) nanos() int64 {
	if t.now != nil {
		return int64(t.now().Sub(t.base))
	}
	return int64(time.Since(t.base))
}

// acquire returns the entry of id with one more reference; t.mu is held.
func (t *Table) acquire(id keyID) *shared {
	s, ok := t.keys.Get(id)
	if !ok {
		// A full table evicts its least recently opened entry; the
		// connections holding it go on sharing it, a new connection of
		// that key starts a fresh entry (one more burst).
		s = &shared{id: id}
		t.keys.Add(id, s)
	}
	s.refs++
	return s
}

// release drops a reference, the last one removing the entry; t.mu is
// held.
func (t *Table) release(s *shared) {
	if s.refs--; s.refs == 0 {
		if cur, ok := t.keys.Peek(s.id); ok && cur == s {
			t.keys.Remove(s.id)
		}
	}
}

// Open returns a meter for one connection from ip; keyOf returns the key
// a rule gave the connection (false when the rule did not apply). It
// returns nil when the table has no limits. The caller must Close it when
// the connection ends.
func (t *Table) Open(ip netip.Addr, keyOf func(rule string) (keys.Key, bool)) *Meter {
	l := t.lim.Load()
	if l == nil {
		return nil
	}
	m := &Meter{t: t, ip: ip, keyOf: keyOf, done: make(chan struct{})}
	m.rebind(l)
	return m
}
