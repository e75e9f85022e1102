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

// refusals remembers, for rate rules keyed by address (ip, subnet, global,
// header; no tiers), until when the store said a key's bucket has no
// token. A handshake from such a key is refused from this memory, before
// any token is verified and without a store call: an address that is over
// its rate costs no signature check and no Redis round trip however many
// forged tokens it sends.
//
// It is sound because a bucket refused at t with delay RetryAfter gets its
// next token at t+RetryAfter and not before, except when another
// handshake's cancelled reservation gives one back: then this memory
// refuses a handshake the store would have admitted, which errs toward
// admitting fewer, never more (brief semantic 1). An entry is identified by
// a seeded 64-bit hash of the rule name, the key and the rule's limit and
// burst, so a reload that changes the limits does not match old entries.
//
// Memory is fixed: refusalShards × refusalSlots entries of 16 bytes
// (128 KiB), each shard allocated on its first refusal, direct-mapped: a
// new entry overwrites whatever had its place, and a lost entry only means
// the next handshake of that key is decided by the store again.
type refusals struct {
	seed   maphash.Seed
	used   atomic.Bool // a refusal was recorded: until then admissions skip the lookups
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

func (m *refusals) hash(c *Claim) uint64 {
	var mh maphash.Hash
	mh.SetSeed(m.seed)
	mh.WriteString(c.Rule)
	var b [24]byte
	putUint64(b[0:], c.Key.Hash(m.seed))
	putUint64(b[8:], math.Float64bits(float64(c.Limit)))
	putUint64(b[16:], uint64(c.Burst))
	mh.Write(b[:])
	return max(mh.Sum64(), 1) // 0 marks an empty entry
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// put remembers that c's bucket has no token before until.
func (m *refusals) put(c *Claim, until time.Time) {
	h := m.hash(c)
	s := &m.shards[h%refusalShards]
	s.mu.Lock()
	if s.slots == nil {
		s.slots = new([refusalSlots]refusalEntry)
	}
	s.slots[(h/refusalShards)%refusalSlots] = refusalEntry{h: h, until: until.UnixNano()}
	s.mu.Unlock()
	m.used.Store(true)
}

// wait returns how long c's bucket is still known to have no token; 0 when
// nothing is known.
func (m *refusals) wait(c *Claim, now time.Time) time.Duration {
	h := m.hash(c)
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

// addressRate reports whether the rule's refusals may be remembered: a
// rate rule whose key and limits do not depend on a verified identity.
func (ru *rule) addressRate() bool {
	switch ru.kind {
	case keyIP, keySubnet, keyGlobal, keyHeader:
		return ru.tiers == nil && ru.claim.Limit > 0
	}
	return false
}

// refusedBefore refuses d from the limiter's memory of refusals when one of
// p's address rate rules is known to have no token for r's key; it reports
// whether it did. Dry runs are never decided here: they must evaluate
// everything.
func (d *Decision) refusedBefore(p *Policy, r *http.Request, ip netip.Addr, hasIP bool) bool {
	m := d.l.refused
	if p.dryRun || !m.used.Load() {
		return false
	}
	var now time.Time
	for i := range p.rules {
		ru := &p.rules[i]
		if !ru.addressRate() {
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
		if wait := m.wait(&c, now); wait > 0 {
			d.buf[0] = c
			d.claims, d.refused = d.buf[:1], 1
			d.refuse(p, c.Rule, ReasonRate, wait)
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

// remember records the store's rate refusal of claims[v.Index] at now when
// it came from an address rate rule of p.
func (l *Limiter) remember(p *Policy, now time.Time, claims []Claim, v Verdict) {
	if p.dryRun || v.Reason != ReasonRate || v.RetryAfter <= 0 {
		return
	}
	c := &claims[v.Index]
	for i := range p.rules {
		if ru := &p.rules[i]; ru.claim.Rule == c.Rule {
			if ru.addressRate() {
				l.refused.put(c, now.Add(v.RetryAfter))
			}
			return
		}
	}
}
