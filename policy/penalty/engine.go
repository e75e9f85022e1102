package penalty

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/keys"
)

// Defaults of Options.
const (
	DefaultLogRate = 10 // ban log lines per second, and their burst
	publishQueue   = 1024
	publishTimeout = 5 * time.Second
)

// ErrUnknownPenalty is returned by Ban and Unban for a name that no
// penalty of the running policy has.
var ErrUnknownPenalty = errors.New("penalty: no such penalty")

// Options configure an Engine. The zero value is usable: the wall clock,
// no logs, bans kept on this instance only.
type Options struct {
	// Now is the clock of Ban, Unban, Bans and Stats; nil means time.Now.
	// Give it the Limiter's clock.
	Now func() time.Time
	// Logger receives a line per ban issued (at most LogRate a second;
	// lines over that budget are counted and the next line carries
	// suppressed=N); nil means no logs.
	Logger *slog.Logger
	// LogRate bounds ban lines per second (default DefaultLogRate).
	LogRate float64
	// Shared, when set, shares bans with every instance (Run must be
	// running); nil keeps them on this instance.
	Shared Shared
}

// Shared carries bans between instances (redisstore.Bans is one).
type Shared interface {
	// Publish makes b known to every instance; a zero b.Until lifts the
	// ban of b.Penalty and b.Key.
	Publish(ctx context.Context, b Ban) error
	// Subscribe calls apply for every ban in force when it starts (and
	// again after a lost connection) and for every ban published by any
	// instance, until ctx ends. apply is called from one goroutine.
	Subscribe(ctx context.Context, apply func(Ban)) error
}

// Ban is a ban as listed, shared and set by hand.
type Ban struct {
	Penalty string
	Key     keys.Key
	// Until is when the ban ends; zero in a published Ban lifts it.
	Until time.Time
	// Level counts the earlier bans of this key not yet forgiven (0 for a
	// first ban); the ban lasted Ban × Factor^Level.
	Level int
	// Reason is the offence kind that earned it (Kind.String), "manual"
	// for a ban set by hand.
	Reason string
	// DryRun is true for a would-be ban: logged and listed, refusing nothing.
	DryRun bool
}

// Engine holds the state of a policy's penalties across reloads. It is safe
// for concurrent use.
type Engine struct {
	now    func() time.Time
	log    *slog.Logger
	logLim *rate.Limiter
	shared Shared
	queue  chan Ban // bans to publish (Run drains it)

	mu         sync.Mutex // serialises Configure
	tables     atomic.Pointer[map[string]*Table]
	factor     atomic.Uint64 // float64 bits of the threshold factor
	suppressed atomic.Uint64
	lost       atomic.Uint64 // bans not published: queue full or Publish failed
}

// New returns an Engine with no penalty.
func New(opts Options) *Engine {
	e := &Engine{now: opts.Now, log: opts.Logger, shared: opts.Shared}
	if e.now == nil {
		e.now = time.Now
	}
	lr := opts.LogRate
	if lr <= 0 {
		lr = DefaultLogRate
	}
	e.logLim = rate.NewLimiter(rate.Limit(lr), int(math.Ceil(lr)))
	if e.shared != nil {
		e.queue = make(chan Ban, publishQueue)
	}
	e.factor.Store(math.Float64bits(1))
	e.tables.Store(&map[string]*Table{})
	return e
}

// Configure makes ps the engine's penalties and returns their tables in
// the same order. A penalty whose name and Params are unchanged keeps its
// table (bans and offence counts); any other starts empty, and penalties
// left out are dropped.
func (e *Engine) Configure(ps []Params) []*Table {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := *e.tables.Load()
	next := make(map[string]*Table, len(ps))
	out := make([]*Table, len(ps))
	for i, p := range ps {
		t, ok := old[p.Name]
		if !ok || t.p != p {
			t = newTable(e, p)
		}
		next[p.Name], out[i] = t, t
	}
	e.tables.Store(&next)
	return out
}

// SetThresholdFactor scales every penalty's threshold by f, 0 < f ≤ 1
// (at least one offence), to tighten penalties under pressure; 1 restores
// them. Other values are ignored.
func (e *Engine) SetThresholdFactor(f float64) {
	// Called at every judged handshake: store only a change, so the
	// cores do not trade the cache line for an unchanged value.
	if b := math.Float64bits(f); f > 0 && f <= 1 && e.factor.Load() != b {
		e.factor.Store(b)
	}
}

func (e *Engine) threshold(n int) int {
	f := math.Float64frombits(e.factor.Load())
	if f == 1 {
		return n
	}
	return max(1, int(math.Ceil(float64(n)*f)))
}

func (e *Engine) table(name string) (*Table, error) {
	t, ok := (*e.tables.Load())[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownPenalty, name)
	}
	return t, nil
}

// Ban bans k under the named penalty for d from now, on every instance
// when bans are shared. A ban already in force is never shortened (Unban
// lifts it). The ban does not count as a repeat for escalation.
func (e *Engine) Ban(ctx context.Context, name string, k keys.Key, d time.Duration) error {
	t, err := e.table(name)
	if err != nil {
		return err
	}
	if d <= 0 {
		return errors.New("penalty: a ban needs a positive duration")
	}
	now := e.now().UnixNano()
	b := ban{until: now + int64(d), reason: KindManual, dry: t.p.DryRun}
	ok := t.apply(k, b, now)
	e.issued(t, k, b, d, ok, false)
	if !ok {
		return errors.New("penalty: the ban table is full of active bans")
	}
	if e.shared != nil {
		return e.shared.Publish(ctx, t.export(k, b))
	}
	return nil
}

// Unban lifts k's ban under the named penalty and forgets its offences, on
// every instance when bans are shared; it reports whether this instance
// held a ban.
func (e *Engine) Unban(ctx context.Context, name string, k keys.Key) (bool, error) {
	t, err := e.table(name)
	if err != nil {
		return false, err
	}
	had := t.unban(k)
	if e.shared != nil {
		return had, e.shared.Publish(ctx, Ban{Penalty: name, Key: k})
	}
	return had, nil
}

// Bans returns the bans in force (dry-run ones included, marked), longest
// remaining first, at most n (n ≤ 0: all).
func (e *Engine) Bans(n int) []Ban {
	ns := e.now().UnixNano()
	var out []Ban
	for _, t := range *e.tables.Load() {
		out = t.list(out, ns)
	}
	slices.SortFunc(out, func(a, b Ban) int { return b.Until.Compare(a.Until) })
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// Stats returns each penalty's counters, by name.
func (e *Engine) Stats() []Stats {
	ns := e.now().UnixNano()
	var out []Stats
	for _, t := range *e.tables.Load() {
		out = append(out, t.stats(ns))
	}
	slices.SortFunc(out, func(a, b Stats) int { return cmpString(a.Penalty, b.Penalty) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Lost returns how many bans could not be published to other instances
// (the publish queue was full, or the store failed).
func (e *Engine) Lost() uint64 { return e.lost.Load() }

// Table returns the table of the named penalty; nil when the engine has
// none of that name.
func (e *Engine) Table(name string) *Table { return (*e.tables.Load())[name] }
