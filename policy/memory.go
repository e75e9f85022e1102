package policy

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wslimit/wslimit/buckets"
	"github.com/wslimit/wslimit/concurrency"
	"github.com/wslimit/wslimit/keys"
)

// MemoryStore keeps counters and buckets in this process: exact connection
// caps (sharded counters whose entries exist only while a key holds slots)
// and size-bounded token-bucket tables (least recently used bucket dropped
// first), one of each per rule name. It is safe for concurrent use.
type MemoryStore struct {
	seed  maphash.Seed
	hash  func(keys.Key) uint64
	rules atomic.Pointer[map[string]*memRule] // copy-on-write
	mu    sync.Mutex                          // serialises additions to rules
}

var _ Store = (*MemoryStore)(nil)

type memRule struct {
	// global counts the slots of the global key: one hot counter every
	// handshake touches, kept in an atomic rather than behind a shard lock.
	global  atomic.Int64
	_       [56]byte // keep global on its own cache line
	conns   *concurrency.Counter[keys.Key]
	mu      sync.Mutex // guards creation and resizing of buckets
	buckets atomic.Pointer[buckets.Table[keys.Key]]
	maxKeys atomic.Int64
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	s := &MemoryStore{seed: maphash.MakeSeed()}
	s.hash = func(k keys.Key) uint64 { return k.Hash(s.seed) }
	m := map[string]*memRule{}
	s.rules.Store(&m)
	return s
}

// rule returns the state kept for the named rule, creating it on first use.
func (s *MemoryStore) rule(name string) *memRule {
	if r, ok := (*s.rules.Load())[name]; ok {
		return r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.rules.Load()
	if r, ok := old[name]; ok {
		return r
	}
	next := make(map[string]*memRule, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	r := &memRule{conns: concurrency.New(s.hash)}
	next[name] = r
	s.rules.Store(&next)
	return r
}

// acquire takes a slot for k under limit; exact under any interleaving.
func (r *memRule) acquire(k keys.Key, limit int) bool {
	if k.Kind != keys.KindGlobal {
		return r.conns.Acquire(k, limit)
	}
	for {
		n := r.global.Load()
		if n >= int64(limit) {
			return false
		}
		if r.global.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives back one of k's slots; never below zero.
func (r *memRule) release(k keys.Key) bool {
	if k.Kind != keys.KindGlobal {
		return r.conns.Release(k)
	}
	for {
		n := r.global.Load()
		if n <= 0 {
			return false
		}
		if r.global.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// table returns r's bucket table, created or resized to the claim's
// max_keys.
func (s *MemoryStore) table(r *memRule, c *Claim) *buckets.Table[keys.Key] {
	want := int64(c.MaxKeys)
	if want <= 0 {
		want = defaultMaxKeys
	}
	if t := r.buckets.Load(); t != nil && r.maxKeys.Load() == want {
		return t
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.buckets.Load()
	switch {
	case t == nil:
		t = buckets.New[keys.Key](buckets.Options{MaxKeys: int(want), RefuseWhenFull: c.RefuseWhenFull})
		r.buckets.Store(t)
	case r.maxKeys.Load() != want:
		t.Resize(int(want))
	}
	r.maxKeys.Store(want)
	return t
}

// Admit grants every claim or none, claim by claim: the connection slot
// (exact), then the token; any refusal releases the slots and cancels the
// tokens taken so far. A cancelled token may be restored only partly under
// contention, which errs toward admitting fewer.
func (s *MemoryStore) Admit(_ context.Context, now time.Time, claims []Claim) (Lease, Verdict, error) {
	if len(claims) > maxRules {
		return Lease{}, Verdict{}, fmt.Errorf("policy: %d claims, at most %d", len(claims), maxRules)
	}
	var buf [4]buckets.Reservation
	taken := buf[:0] // taken[i] is claims[i]'s token (the zero Reservation for none)
	for i := range claims {
		c := &claims[i]
		r := s.rule(c.Rule)
		if c.Conns > 0 && !r.acquire(c.Key, c.Conns) {
			s.undo(now, claims[:i], taken)
			return Lease{}, Verdict{Index: i, Reason: ReasonConnections}, nil
		}
		var rv buckets.Reservation
		if c.Limit > 0 {
			var res buckets.Result
			rv, res = s.table(r, c).Reserve(c.Key, now, c.Limit, c.Burst)
			if !res.OK {
				s.undo(now, claims[:i+1], taken)
				reason := ReasonRate
				if res.Full {
					reason = ReasonTableFull
				}
				return Lease{}, Verdict{Index: i, Reason: reason, RetryAfter: res.RetryAfter}, nil
			}
		}
		taken = append(taken, rv)
	}
	return Lease{}, Verdict{OK: true}, nil
}

// undo releases the slots of claims and cancels the tokens taken.
func (s *MemoryStore) undo(now time.Time, claims []Claim, taken []buckets.Reservation) {
	for i := range claims {
		if c := &claims[i]; c.Conns > 0 {
			s.rule(c.Rule).release(c.Key)
		}
	}
	for _, rv := range taken {
		rv.Cancel(now)
	}
}

// check returns the Verdict Admit would give claims at now for their caps
// and rates as the store stands, charging nothing (a full table in refuse
// mode is left to Admit). The Limiter asks it before verifying an identity,
// so that an address over its limits costs no signature check; Admit stays
// the decision, so a slot freed or taken in between errs either way by one
// handshake's timing, never past a cap.
func (s *MemoryStore) check(now time.Time, claims []Claim) Verdict {
	rules := *s.rules.Load()
	for i := range claims {
		c := &claims[i]
		r, ok := rules[c.Rule]
		if !ok {
			continue // no state yet: nothing held, every bucket full
		}
		if c.Conns > 0 && r.count(c.Key) >= c.Conns {
			return Verdict{Index: i, Reason: ReasonConnections}
		}
		if t := r.buckets.Load(); c.Limit > 0 && t != nil {
			if tok, ok := t.Tokens(c.Key, now); ok && tok < 1 {
				wait := time.Duration(math.Ceil((1 - tok) / float64(c.Limit) * float64(time.Second)))
				return Verdict{Index: i, Reason: ReasonRate, RetryAfter: wait}
			}
		}
	}
	return Verdict{OK: true}
}

// Release frees the connection slots of an admitted lease.
func (s *MemoryStore) Release(_ context.Context, _ Lease, claims []Claim) error {
	for i := range claims {
		if c := &claims[i]; c.Conns > 0 {
			s.rule(c.Rule).release(c.Key)
		}
	}
	return nil
}

// Close is a no-op; the store holds no resources beyond memory.
func (s *MemoryStore) Close() error { return nil }

// Inspector is implemented by stores that can report their state, for
// metrics and inspection pages. MemoryStore implements it.
type Inspector interface {
	// Rules names the rules the store holds state for.
	Rules() []string
	// Stats returns a snapshot of one rule's state.
	Stats(rule string) RuleStats
	// TopKeys returns up to n keys holding the most slots under rule.
	TopKeys(rule string, n int) []KeyCount
}

var _ Inspector = (*MemoryStore)(nil)

// KeyCount is a key and the connection slots it holds.
type KeyCount struct {
	Key   keys.Key
	Count int
}

// RuleStats is a snapshot of one rule's state in a MemoryStore.
type RuleStats struct {
	// Keys is the number of keys holding at least one connection slot.
	Keys int
	// Connections is the number of slots held.
	Connections int
	// Buckets is the number of token buckets tracked.
	Buckets int
	// Evictions counts buckets dropped before they had refilled.
	Evictions uint64
}

// Stats returns a snapshot of the named rule's state.
func (s *MemoryStore) Stats(rule string) RuleStats {
	r, ok := (*s.rules.Load())[rule]
	if !ok {
		return RuleStats{}
	}
	st := RuleStats{Keys: r.conns.Len(), Connections: r.conns.Total()}
	if g := int(r.global.Load()); g > 0 {
		st.Keys++
		st.Connections += g
	}
	if t := r.buckets.Load(); t != nil {
		st.Buckets = t.Len()
		st.Evictions = t.Evictions()
	}
	return st
}

// Rules returns the names of the rules the store has state for.
func (s *MemoryStore) Rules() []string {
	m := *s.rules.Load()
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// TopKeys returns up to n keys of rule holding the most connection slots,
// most first. For an inspection page; keys must never become metric labels.
func (s *MemoryStore) TopKeys(rule string, n int) []KeyCount {
	r, ok := (*s.rules.Load())[rule]
	if !ok || n <= 0 {
		return nil
	}
	top := r.conns.Top(n)
	out := make([]KeyCount, 0, len(top)+1)
	if g := int(r.global.Load()); g > 0 {
		out = append(out, KeyCount{Key: keys.Global(), Count: g})
	}
	for _, e := range top {
		out = append(out, KeyCount{Key: e.Key, Count: e.Count})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out[:min(n, len(out))]
}

// count returns the slots key holds under rule.
func (s *MemoryStore) count(rule string, k keys.Key) int {
	r, ok := (*s.rules.Load())[rule]
	if !ok {
		return 0
	}
	return r.count(k)
}

// count returns the slots k holds.
func (r *memRule) count(k keys.Key) int {
	if k.Kind == keys.KindGlobal {
		return int(r.global.Load())
	}
	return r.conns.Count(k)
}
