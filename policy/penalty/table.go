package penalty

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/wslimit/wslimit/keys"
)

// Kind is a kind of offence.
type Kind uint8

// The kinds of offence; KindManual marks a ban set through Engine.Ban.
const (
	KindRefused         Kind = iota + 1 // a refusal by a chosen rule or reason
	KindInvalidIdentity                 // a token present but failing verification
	KindShortLived                      // an admitted connection closed within short_lived
	KindMessage                         // a message-limit violation (Offender.Offend)
	KindManual                          // a ban set by hand
	numKinds
)

// String returns the kind as it appears in metrics, logs and the inspector.
func (k Kind) String() string {
	switch k {
	case KindRefused:
		return "refused"
	case KindInvalidIdentity:
		return "invalid_identity"
	case KindShortLived:
		return "short_lived"
	case KindMessage:
		return "message"
	case KindManual:
		return "manual"
	}
	return "unknown"
}

func parseKind(s string) Kind {
	for k := KindRefused; k < numKinds; k++ {
		if k.String() == s {
			return k
		}
	}
	return 0
}

// sweepEvery bounds how often a full ban table is swept for expired
// entries (an O(MaxBans) walk).
const sweepEvery = time.Second

// record is what the offence table keeps of one key.
type record struct {
	times []int64 // unix ns of the latest offences within the window, oldest first
	level int     // bans issued and not yet forgiven
	quiet int64   // unix ns since which the key has been quiet (its last offence or ban end)
}

// ban is one entry of the ban table. An expired entry is harmless (it
// refuses nothing) and is the first to go when the table is full.
type ban struct {
	until  int64 // unix ns
	level  int
	reason Kind
	dry    bool
}

// Table is one penalty's state: its offence table and its ban table. It is
// safe for concurrent use. Tables are made by Engine.Configure.
type Table struct {
	e *Engine
	p Params

	mu        sync.RWMutex
	offenders *simplelru.LRU[keys.Key, *record] // evicts the least recent offender when full
	bans      *simplelru.LRU[keys.Key, ban]     // never evicts an active ban (insert)
	lastSweep int64
	n         atomic.Int32 // entries in bans: Banned skips the lock while 0

	offences [numKinds]atomic.Uint64
	issued   atomic.Uint64 // bans issued (by offences, by hand, from other instances)
	dropped  atomic.Uint64 // bans not issued because the ban table was full of active bans
}

func newTable(e *Engine, p Params) *Table {
	t := &Table{e: e, p: p}
	t.offenders, _ = simplelru.NewLRU[keys.Key, *record](p.MaxKeys, nil)
	t.bans, _ = simplelru.NewLRU[keys.Key, ban](p.MaxBans, nil)
	return t
}

// Name returns the penalty's name.
func (t *Table) Name() string { return t.p.Name }

// Banned reports whether k is under an enforced ban at now, and for how
// long still. A dry-run ban is never reported. While the table holds no
// ban it takes no lock.
func (t *Table) Banned(k keys.Key, now time.Time) (time.Duration, bool) {
	if t.n.Load() == 0 {
		return 0, false
	}
	t.mu.RLock()
	b, ok := t.bans.Peek(k)
	t.mu.RUnlock()
	left := time.Duration(b.until - now.UnixNano())
	if !ok || b.dry || left <= 0 {
		return 0, false
	}
	return left, true
}

// Offend records an offence of kind by k at now, and bans k when it makes
// threshold offences within the window. Offences of a key already banned
// are counted in metrics only: they neither extend nor shorten its ban.
func (t *Table) Offend(k keys.Key, kind Kind, now time.Time) {
	if kind >= numKinds {
		kind = 0
	}
	t.offences[kind].Add(1)
	ns := now.UnixNano()
	t.mu.Lock()
	if b, ok := t.bans.Peek(k); ok && b.until > ns {
		t.mu.Unlock()
		return
	}
	rec, ok := t.offenders.Get(k)
	if !ok {
		rec = &record{times: make([]int64, 0, t.p.Threshold)}
		t.offenders.Add(k, rec)
	}
	t.forgive(rec, ns)
	rec.quiet = ns
	cut := ns - int64(t.p.Window)
	i := 0
	for i < len(rec.times) && rec.times[i] <= cut {
		i++
	}
	rec.times = append(rec.times[:0], rec.times[i:]...)
	if len(rec.times) == t.p.Threshold {
		rec.times = append(rec.times[:0], rec.times[1:]...)
	}
	rec.times = append(rec.times, ns)
	if len(rec.times) < t.e.threshold(t.p.Threshold) {
		t.mu.Unlock()
		return
	}
	d := t.p.length(rec.level)
	b := ban{until: ns + int64(d), level: rec.level, reason: kind, dry: t.p.DryRun}
	rec.times = rec.times[:0]
	rec.level++
	rec.quiet = b.until
	ok = t.put(k, b, ns)
	t.mu.Unlock()
	t.e.issued(t, k, b, d, ok, true)
}

// forgive forgets rec's repeat count after a quiet period.
func (t *Table) forgive(rec *record, ns int64) {
	if rec.quiet != 0 && ns-rec.quiet > int64(t.p.Forgive) {
		rec.level = 0
	}
}

// length is the ban after level earlier bans: Ban × Factor^level, at most
// MaxBan.
func (p Params) length(level int) time.Duration {
	d := p.Ban
	for range level {
		if d >= p.MaxBan || d > p.MaxBan/time.Duration(p.Factor) {
			return p.MaxBan
		}
		d *= time.Duration(p.Factor)
	}
	return min(d, p.MaxBan)
}

// put records b for k under t.mu: a ban already in force is never made
// shorter, and an active ban is never evicted. false when the table is
// full of active bans and b was dropped.
func (t *Table) put(k keys.Key, b ban, ns int64) bool {
	if old, ok := t.bans.Peek(k); ok {
		if old.until > b.until {
			b.until = old.until
		}
		if old.until > ns && !old.dry {
			b.dry = false // an enforced ban stays enforced
		}
		t.bans.Add(k, b)
		return true
	}
	if t.bans.Len() >= t.p.MaxBans && !t.makeRoom(ns) {
		t.dropped.Add(1)
		return false
	}
	t.bans.Add(k, b)
	t.n.Store(int32(t.bans.Len()))
	return true
}

// makeRoom frees one place in the full ban table by dropping expired
// entries: the oldest if it has expired, else (at most once per
// sweepEvery) every expired entry. Active bans are never dropped.
func (t *Table) makeRoom(ns int64) bool {
	if _, b, ok := t.bans.GetOldest(); ok && b.until <= ns {
		t.bans.RemoveOldest()
		return true
	}
	if ns-t.lastSweep < int64(sweepEvery) {
		return false
	}
	t.lastSweep = ns
	for _, k := range t.bans.Keys() {
		if b, ok := t.bans.Peek(k); ok && b.until <= ns {
			t.bans.Remove(k)
		}
	}
	t.n.Store(int32(t.bans.Len()))
	return t.bans.Len() < t.p.MaxBans
}

// apply records a ban set by hand or received from another instance, and
// raises k's repeat count to it so that the next ban escalates anywhere.
func (t *Table) apply(k keys.Key, b ban, ns int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec, ok := t.offenders.Peek(k); ok {
		rec.level = max(rec.level, b.level+1)
		rec.quiet = max(rec.quiet, b.until)
	} else if b.reason != KindManual {
		t.offenders.Add(k, &record{level: b.level + 1, quiet: b.until})
	}
	return t.put(k, b, ns)
}

// holds reports whether t has a ban of k lasting at least until.
func (t *Table) holds(k keys.Key, until int64) bool {
	t.mu.RLock()
	b, ok := t.bans.Peek(k)
	t.mu.RUnlock()
	return ok && b.until >= until
}

// unban lifts k's ban and forgets its offences; false when k had none.
func (t *Table) unban(k keys.Key) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.offenders.Remove(k)
	ok := t.bans.Remove(k)
	t.n.Store(int32(t.bans.Len()))
	return ok
}

// list appends t's active bans at ns to out.
func (t *Table) list(out []Ban, ns int64) []Ban {
	if t.n.Load() == 0 {
		return out
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, k := range t.bans.Keys() {
		b, _ := t.bans.Peek(k)
		if b.until > ns {
			out = append(out, t.export(k, b))
		}
	}
	return out
}

func (t *Table) export(k keys.Key, b ban) Ban {
	return Ban{Penalty: t.p.Name, Key: k, Until: time.Unix(0, b.until), Level: b.level, Reason: b.reason.String(), DryRun: b.dry}
}

// Stats is a snapshot of one penalty's counters, for metrics.
type Stats struct {
	Penalty string
	// Offences counts offences by kind (KindRefused…KindMessage).
	Offences map[Kind]uint64
	// Bans counts bans issued; Dropped those not issued because the ban
	// table was full of active bans; Active is the bans in force now.
	Bans, Dropped uint64
	Active        int
	// Offenders is the number of keys in the offence table.
	Offenders int
}

func (t *Table) stats(ns int64) Stats {
	s := Stats{Penalty: t.p.Name, Offences: map[Kind]uint64{}, Bans: t.issued.Load(), Dropped: t.dropped.Load()}
	for k := KindRefused; k < KindManual; k++ {
		s.Offences[k] = t.offences[k].Load()
	}
	t.mu.RLock()
	s.Offenders = t.offenders.Len()
	if t.n.Load() > 0 {
		for _, k := range t.bans.Keys() {
			if b, _ := t.bans.Peek(k); b.until > ns {
				s.Active++
			}
		}
	}
	t.mu.RUnlock()
	return s
}
