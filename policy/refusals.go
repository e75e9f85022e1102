package policy

import (
	"hash/maphash"
	"math"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// refusals remembers, for rules keyed by address (ip, subnet, global,
// header; no tiers), until when a key is known to be over a limit: its
// bucket empty (from the store's rate refusal, or an admission that took
// its last token), or, with a store that has no check (Redis) and a policy
// that verifies identities, its cap full (a cap refusal, or an admission
// that took its last slot; not for global keys). A handshake from such a
// key is refused from this memory, before any token is verified and
// without a store call: an address over its limits costs no signature
// check and no Redis round trip however many forged tokens it sends.
//
// A bucket refused at t with delay RetryAfter gets its next token at
// t+RetryAfter and not before, except when another handshake's cancelled
// reservation gives one back: then this memory refuses a handshake the
// store would have admitted, which errs toward admitting fewer, never more
// (brief semantic 1). A full cap is remembered for the policy's
// cap_retry_after (what the refused client is told to wait) and forgotten
// when this instance releases a slot of that key; a slot that another
// instance frees is not seen here, so the key's handshakes on this instance
// may be refused for up to that long while a slot is free: fewer, never
// more. An entry is identified by a seeded 64-bit hash of its kind, the
// rule name, the key and the rule's limits, so a reload that changes the
// limits does not match old entries.
//
// Memory is fixed: refusalShards × refusalSlots entries of 16 bytes
// (128 KiB), each shard allocated on its first refusal, direct-mapped: a
// new entry overwrites whatever had its place, and a lost entry only means
// the next handshake of that key is decided by the store again.
type refusals struct {
	seed   maphash.Seed
	used   atomic.Bool // a refusal was recorded: until then admissions skip the lookups
	caps   atomic.Bool // a full cap was recorded: until then releases skip forget
	shards [refusalShards]refusalShard
}

const (
	refusalShards = 64
	refusalSlots  = 128
)

type refusalShard struct {
	mu    sync.Mutex
	slots *[refusalSlots]refusalEntry // nil until the shard's first refusal
}

type refusalEntry struct {
	h     uint64 // 0: empty
	until int64  // unix nanoseconds
}

func newRefusals() *refusals { return &refusals{seed: maphash.MakeSeed()} }

// The kinds of entry: a bucket without a token, a cap without a slot.
const (
	emptyBucket byte = 'r'
	fullCap     byte = 'c'
)

func (m *refusals) hash(c *Claim, kind byte) uint64 {
	var mh maphash.Hash
	mh.SetSeed(m.seed)
	mh.WriteString(c.Rule)
	var b [33]byte
	putUint64(b[0:], c.Key.Hash(m.seed))
	putUint64(b[8:], math.Float64bits(float64(c.Limit)))
	putUint64(b[16:], uint64(c.Burst))
	putUint64(b[24:], uint64(c.Conns))
	b[32] = kind
	mh.Write(b[:])
	return max(mh.Sum64(), 1) // 0 marks an empty entry
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// put remembers that c's bucket has no token (kind emptyBucket) or its cap
// no slot (fullCap) before until.
func (m *refusals) put(c *Claim, kind byte, until time.Time) {
	h := m.hash(c, kind)
	s := &m.shards[h%refusalShards]
	s.mu.Lock()
	if s.slots == nil {
		s.slots = new([refusalSlots]refusalEntry)
	}
	s.slots[(h/refusalShards)%refusalSlots] = refusalEntry{h: h, until: until.UnixNano()}
	s.mu.Unlock()
	if kind == fullCap && !m.caps.Load() {
		m.caps.Store(true)
	}
	if !m.used.Load() {
		m.used.Store(true)
	}
}

// forget drops what is remembered about c's cap: a slot of it was freed.
func (m *refusals) forget(c *Claim) {
	h := m.hash(c, fullCap)
	s := &m.shards[h%refusalShards]
	s.mu.Lock()
	if s.slots != nil && s.slots[(h/refusalShards)%refusalSlots].h == h {
		s.slots[(h/refusalShards)%refusalSlots] = refusalEntry{}
	}
	s.mu.Unlock()
}

// wait returns how long c's bucket (kind emptyBucket) or cap (fullCap) is
// still known to be over its limit; 0 when nothing is known.
func (m *refusals) wait(c *Claim, kind byte, now time.Time) time.Duration {
	h := m.hash(c, kind)
	s := &m.shards[h%refusalShards]
	s.mu.Lock()
	var e refusalEntry
	if s.slots != nil {
		e = s.slots[(h/refusalShards)%refusalSlots]
	}
	s.mu.Unlock()
	if e.h != h {
		return 0
	}
	return max(time.Duration(e.until-now.UnixNano()), 0)
}

// addressRate reports whether the rule's empty buckets may be remembered:
// a rate rule whose key and limits do not depend on a verified identity.
func (ru *rule) addressRate() bool {
	return ru.byAddress() && ru.tiers == nil && ru.claim.Limit > 0
}

// addressCap reports whether the rule's full caps may be remembered, in a
// policy that verifies identities (p.verifies: otherwise there is no
// signature to spare, and the store decides exactly): a cap rule keyed by
// address, not global (a full global cap remembered would refuse every
// handshake of this instance while other instances free slots).
func (ru *rule) addressCap(p *Policy) bool {
	return p.verifies && ru.byAddress() && ru.kind != keyGlobal && ru.tiers == nil && ru.claim.Conns > 0
}

// refusedBefore refuses d from the limiter's memory of refusals when one of
// p's address rules is known to be over a limit for r's key; it reports
// whether it did. Dry runs are never decided here: they must evaluate
// everything.
func (d *Decision) refusedBefore(p *Policy, r *http.Request, ip netip.Addr, hasIP bool) bool {
	m := d.l.refused
	if p.dryRun || !m.used.Load() {
		return false
	}
	caps := m.caps.Load()
	var now time.Time
	for i := range p.rules {
		ru := &p.rules[i]
		rate, capped := ru.addressRate(), caps && ru.addressCap(p)
		if !rate && !capped {
			continue
		}
		k, ok := ru.addressKey(r, ip, hasIP)
		if !ok {
			continue
		}
		if now.IsZero() {
			now = d.l.now()
		}
		c := ru.claim
		c.Key = k
		reason, wait := ReasonRate, time.Duration(0)
		if rate {
			wait = m.wait(&c, emptyBucket, now)
		}
		if wait == 0 && capped && m.wait(&c, fullCap, now) > 0 {
			reason, wait = ReasonConnections, p.reject.CapRetryAfter
		}
		if wait > 0 {
			d.buf[0] = c
			d.claims, d.refused = d.buf[:1], 1
			d.refuse(p, c.Rule, reason, wait)
			return true
		}
	}
	return false
}

// checker is a store that can tell, without I/O and charging nothing,
// whether it would refuse claims now (MemoryStore).
type checker interface {
	check(now time.Time, claims []Claim) Verdict
}

// refusedByAddress puts the claims of p's address rules (those whose key
// and limits need no identity) to the store's check, when it has one,
// before any identity is verified; it reports whether the check refused d.
// Such a refusal is final and charged nothing. When the check admits, the
// caller puts every claim to Admit, which decides. Dry runs evaluate
// everything and are never decided here.
func (d *Decision) refusedByAddress(p *Policy, r *http.Request, ip netip.Addr, hasIP bool) bool {
	ck, ok := d.l.store.(checker)
	if !ok || p.dryRun {
		return false
	}
	claims := d.buf[:0]
	for i := range p.rules {
		ru := &p.rules[i]
		if !ru.byAddress() || ru.tiers != nil {
			continue
		}
		if k, ok := ru.addressKey(r, ip, hasIP); ok {
			claims = append(claims, ru.claim)
			claims[len(claims)-1].Key = k
		}
	}
	if len(claims) == 0 {
		return false
	}
	v := ck.check(d.l.now(), claims)
	if v.OK {
		return false
	}
	d.claims = claims
	d.refusedBy(p, v)
	return true
}

// remember records what the store's verdict v on claims at now says about
// p's address rules: a refusal by a rate (until its RetryAfter) or, with a
// store that has no check, by a cap (for cap_retry_after, or until a slot
// of the key is released here); an admission that left buckets empty
// (v.Empty, until v.RetryAfter) or caps full (v.Full).
func (l *Limiter) remember(p *Policy, now time.Time, claims []Claim, v Verdict) {
	if p.dryRun || v.OK && v.Full|v.Empty == 0 {
		return
	}
	if !v.OK {
		empty, full := v.Reason == ReasonRate && v.RetryAfter > 0, v.Reason == ReasonConnections
		l.note(p, now, &claims[v.Index], empty, full, v.RetryAfter)
		return
	}
	for i := range min(len(claims), 64) {
		if empty, full := v.Empty&(1<<i) != 0 && v.RetryAfter > 0, v.Full&(1<<i) != 0; empty || full {
			l.note(p, now, &claims[i], empty, full, v.RetryAfter)
		}
	}
}

// note remembers that c's bucket is empty for wait, and that its cap is
// full, when c's rule is an address rule of p.
func (l *Limiter) note(p *Policy, now time.Time, c *Claim, empty, full bool, wait time.Duration) {
	for i := range p.rules {
		if ru := &p.rules[i]; ru.claim.Rule == c.Rule {
			if empty && ru.addressRate() {
				l.refused.put(c, emptyBucket, now.Add(wait))
			}
			if full && !l.checks && ru.addressCap(p) {
				l.refused.put(c, fullCap, now.Add(p.reject.CapRetryAfter))
			}
			return
		}
	}
}

// forgetCaps drops the memory of full caps for the claims of a released
// lease: this instance has just freed a slot of each.
func (l *Limiter) forgetCaps(claims []Claim) {
	if !l.refused.caps.Load() {
		return
	}
	for i := range claims {
		if claims[i].Conns > 0 {
			l.refused.forget(&claims[i])
		}
	}
}
