package policy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/keys/identity"
	"github.com/wslimit/wslimit/policy/penalty"
	"github.com/wslimit/wslimit/policy/pressure"
)

// Options configure a Limiter. The zero value is usable: in-memory state,
// the wall clock, no logging.
type Options struct {
	// Store holds the limiting state; nil means a new MemoryStore of the
	// Limiter's own. The Limiter never closes a store: its owner does.
	Store Store
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives store errors; nil means no logging.
	Logger *slog.Logger
	// Observer, when set, is told of every decision and every release
	// (metrics); nil means none.
	Observer Observer
	// Penalties holds the state of the policy's penalties (bans, offence
	// counts) and serves their Go and admin API; nil means an engine of
	// the Limiter's own, without sharing. Build it with the same Now.
	Penalties *penalty.Engine
	// Pressure, when set, is the monitor whose level the policy's
	// pressure section acts on (package policy/pressure). The caller runs
	// it (Monitor.Run); the Limiter gives it the section of every policy
	// it takes. nil means a pressure section never applies.
	Pressure *pressure.Monitor
}

// Observer is told of every decision and release, outside any lock. It
// must be fast and safe for concurrent use. Decision keys are for logs:
// an Observer that exports metrics must never use them as labels.
type Observer interface {
	// Decided reports a decision and how long the evaluation took.
	Decided(d *Decision, took time.Duration)
	// Released reports that an admitted decision released its slots
	// (exactly once per admitted decision that held slots).
	Released(d *Decision)
}

// Limiter evaluates a policy's rules for each handshake against a Store.
// It is safe for concurrent use; SetPolicy swaps the policy atomically
// while handshakes are in flight.
type Limiter struct {
	policy atomic.Pointer[Policy]
	store  Store
	now    func() time.Time
	log    *slog.Logger
	obs    Observer
	// refused remembers recent rate refusals of address rules, so that an
	// address over its rate is refused before any token is verified
	// (refusals.go).
	refused *refusals
	// checks is true when the store answers refusedByAddress's check
	// (MemoryStore): full caps are then asked of it, not remembered.
	checks bool
	pen    penalties         // penalize.go
	press  *pressure.Monitor // nil without one (pressure.go)
}

// NewLimiter returns a Limiter enforcing p.
func NewLimiter(p *Policy, opts Options) *Limiter {
	l := &Limiter{store: opts.Store, now: opts.Now, log: opts.Logger, obs: opts.Observer, refused: newRefusals(), press: opts.Pressure}
	if l.store == nil {
		l.store = NewMemoryStore()
	}
	_, l.checks = l.store.(checker)
	if l.now == nil {
		l.now = time.Now
	}
	l.pen.engine = opts.Penalties
	if l.pen.engine == nil {
		l.pen.engine = penalty.New(penalty.Options{Now: l.now, Logger: l.log})
	}
	l.pen.bind(p)
	l.policy.Store(p)
	l.adopt(p)
	return l
}

// Policy returns the policy in force.
func (l *Limiter) Policy() *Policy { return l.policy.Load() }

// SetPolicy makes p the policy for every later handshake. Connections
// admitted before keep their slots and release them by the rule names they
// were admitted under; stores keep state by rule name, so counts carry over
// to a rule of the same name and a changed cap applies to new handshakes.
// The limiter's pressure monitor, if any, takes p's pressure section.
func (l *Limiter) SetPolicy(p *Policy) {
	l.pen.bind(p)
	l.policy.Store(p)
	l.adopt(p)
}

// Decision is the outcome of one handshake's evaluation. When Allowed, it
// may hold connection slots: Release frees them, exactly once however often
// it is called. A Decision is safe for concurrent use by Release.
type Decision struct {
	// Allowed is true when the handshake may proceed (always true in dry
	// run).
	Allowed bool
	// Exempt is true when the client is in an exempt block.
	Exempt bool
	// WouldReject is true in dry-run mode when enforcement would have
	// refused; Rule, Reason and RetryAfter then say why.
	WouldReject bool
	// InvalidToken is true when the request carried a token, or a session
	// cookie of a verified cookie rule, that failed verification; it was
	// treated as absent. The value itself is never kept.
	InvalidToken bool
	// Reason says why.
	Reason Reason
	// Rule names the rule that refused (or would have).
	Rule string
	// RetryAfter is when to try again: the bucket's real refill time for
	// ReasonRate, the policy's cap_retry_after for ReasonConnections.
	RetryAfter time.Duration
	// ClientIP is the resolved client address (invalid if unresolvable).
	ClientIP netip.Addr
	// Identity is the verified identity's key claim ("" when none); for
	// logs, never a metric label.
	Identity string
	// Protocols is the request's Sec-WebSocket-Protocol offer without the
	// entries that carry a token (identity.jwt from: subprotocol), as
	// header lines: what the upgrader may choose from, so that it never
	// selects and echoes a token. nil when the offer carries no token (use
	// the request as it is); empty when no entry remains.
	Protocols []string
	// Offender follows an admitted connection for the penalties that count
	// its behaviour (short_lived, messages): Release reports its close,
	// and a message-limit check reports violations with
	// Offender.Offend(penalty.KindMessage). nil when no penalty follows it.
	Offender *penalty.Offender

	l        *Limiter
	p        *Policy
	claims   []Claim // as given to the store; nil before a store answered
	lease    Lease
	refused  int  // index+1 in claims of the refusing claim; 0 for none
	held     bool // Allowed with slots to release
	released atomic.Bool
	// buf holds the claims of policies of up to three rules (the common
	// ip / subnet / global policy), so that a Decision is one allocation.
	buf [3]Claim
}

// Status is the HTTP status for a refused handshake: 401 for a missing
// identity on a rule with on_missing: reject, 503 for a store failure, 429
// otherwise; 200 when allowed.
func (d *Decision) Status() int {
	switch {
	case d.Allowed:
		return http.StatusOK
	case d.Reason == ReasonMissing:
		return http.StatusUnauthorized
	case d.Reason == ReasonStoreError:
		return http.StatusServiceUnavailable
	default:
		return http.StatusTooManyRequests
	}
}

// Policy returns the policy the decision was made under: a handshake that
// straddles a reload is answered by the policy that decided it.
func (d *Decision) Policy() *Policy { return d.p }

// RefusedClaim returns the refusing rule's claim as evaluated (its key and
// the limits that applied, tiers included), also in dry run; false when no
// rule's limit refused (an admission, a missing identity, a store error).
// Its key is for logs: never use it as a metric label.
func (d *Decision) RefusedClaim() (Claim, bool) {
	if d.refused == 0 || d.refused > len(d.claims) {
		return Claim{}, false
	}
	return d.claims[d.refused-1], true
}

// Holds reports whether the decision holds slots not yet released.
func (d *Decision) Holds() bool { return d.held && !d.released.Load() }

// Release frees every slot the decision holds. Only the first call does
// anything; it reports whether this call released. Safe to call on a
// refused decision and from several goroutines.
func (d *Decision) Release() bool {
	if !d.held || !d.released.CompareAndSwap(false, true) {
		return false
	}
	ctx := context.Background()
	if err := d.l.store.Release(ctx, d.lease, d.claims); err != nil && d.l.log != nil {
		d.l.log.LogAttrs(ctx, slog.LevelWarn, "wslimit: release failed", slog.String("error", err.Error()))
	}
	d.l.forgetCaps(d.claims)
	d.Offender.Closed()
	if d.l.obs != nil {
		d.l.obs.Released(d)
	}
	return true
}

// Claims returns the claims an admitted decision holds (rule names, keys,
// limits); nil for a refused or exempt decision. Callers must not modify
// the slice.
func (d *Decision) Claims() []Claim {
	if !d.held {
		return nil
	}
	return d.claims
}

// Admit evaluates every rule of the policy for r at once. All or nothing:
// a refused handshake holds no slot and has spent no token. Being refused
// is a result (Decision.Allowed false), not an error.
func (l *Limiter) Admit(ctx context.Context, r *http.Request) *Decision {
	if l.obs == nil {
		d := l.admit(ctx, r)
		l.judge(r, d)
		return d
	}
	start := time.Now()
	d := l.admit(ctx, r)
	l.judge(r, d)
	l.obs.Decided(d, time.Since(start))
	return d
}

func (l *Limiter) admit(ctx context.Context, r *http.Request) *Decision {
	p := l.policy.Load()
	d := &Decision{l: l, p: p, Allowed: true}
	if p.jwt != nil {
		d.Protocols = p.jwt.TokenFreeProtocols(r.Header)
	}
	claims, ok := d.collect(p, r)
	if ok && p.press != nil {
		ok = l.underPressure(d, p, r, claims)
	}
	if !ok || len(claims) == 0 {
		return d
	}
	now := l.now()
	lease, v, err := l.store.Admit(ctx, now, claims)
	if err != nil {
		if l.log != nil {
			l.log.LogAttrs(ctx, slog.LevelError, "wslimit: store failed; refusing", slog.String("error", err.Error()))
		}
		d.refuse(p, "", ReasonStoreError, 0)
		return d
	}
	d.claims = claims
	l.remember(p, now, claims, v)
	if !v.OK {
		d.refusedBy(p, v)
		return d
	}
	d.lease, d.held = lease, true
	return d
}

// refusedBy records the store's refusal v of d's claims.
func (d *Decision) refusedBy(p *Policy, v Verdict) {
	if v.Reason == ReasonStoreError {
		d.refuse(p, "", ReasonStoreError, v.RetryAfter)
		return
	}
	d.refused = v.Index + 1
	ra := v.RetryAfter
	if v.Reason == ReasonConnections {
		ra = p.reject.CapRetryAfter
	}
	d.refuse(p, d.claims[v.Index].Rule, v.Reason, ra)
}

// collect resolves the client and takes each rule's key from r: the claims
// to put to the store. false means the decision is already made (an exempt
// client, an address rate rule remembered as refusing, or a missing
// identity that refuses).
func (d *Decision) collect(p *Policy, r *http.Request) ([]Claim, bool) {
	ip, ipErr := p.clientIP.Resolve(r)
	if ipErr == nil {
		d.ClientIP = ip
		if p.exempted(ip) {
			d.Exempt = true
			return nil, false
		}
	}
	// A banned address is refused before anything else (penalize.go).
	if len(p.penalties) > 0 && d.banned(p, r, ip, ipErr == nil, nil) {
		return nil, false
	}
	// Address rules first: a key known to be over its rate refuses before
	// any token is verified (and before any store call); a store that can
	// answer without I/O is asked about the address rules before any
	// identity is verified.
	if d.refusedBefore(p, r, ip, ipErr == nil) || p.verifies && d.refusedByAddress(p, r, ip, ipErr == nil) {
		return nil, false
	}
	claims := d.buf[:0]
	if len(p.rules) > len(d.buf) {
		claims = make([]Claim, 0, len(p.rules))
	}
	who := requestIdentity{p: p, r: r, now: d.l.now, d: d}
	for i := range p.rules {
		rule := &p.rules[i]
		k, ok := rule.addressKey(r, ip, ipErr == nil)
		if !rule.byAddress() {
			k, ok = rule.key(r, &who)
		}
		if !ok {
			if rule.rejectMiss {
				d.refuse(p, rule.claim.Rule, ReasonMissing, 0)
				if !d.WouldReject {
					return nil, false
				}
			}
			continue
		}
		if rule.tiers == nil {
			claims = append(claims, rule.claim)
		} else {
			claims = append(claims, rule.tier(&who))
		}
		claims[len(claims)-1].Key = k
	}
	// A banned token or cookie key is refused before any store call.
	if len(p.penalties) > 0 && d.banned(p, r, ip, ipErr == nil, &who) {
		return nil, false
	}
	return claims, true
}

// tier returns the claim (without its key) of the tier the request's
// verified claim selects, or the rule's own.
func (ru *rule) tier(who *requestIdentity) Claim {
	if id, ok := who.get(); ok {
		if v, ok := id.Claim(ru.tierClaim); ok {
			if t, ok := ru.tiers[v]; ok {
				return t
			}
		}
	}
	return ru.claim
}

// refuse records a refusal; in dry run the decision stays allowed.
func (d *Decision) refuse(p *Policy, rule string, reason Reason, retry time.Duration) {
	if d.Rule == "" {
		d.Rule, d.Reason, d.RetryAfter = rule, reason, retry
	}
	if p.dryRun {
		d.WouldReject = true
		return
	}
	d.Allowed = false
}

// requestIdentity verifies a request's token at most once per admission,
// when a rule first needs it.
type requestIdentity struct {
	p   *Policy
	r   *http.Request
	now func() time.Time
	d   *Decision

	done bool
	ok   bool
	id   identity.Identity
}

func (w *requestIdentity) get() (identity.Identity, bool) {
	if w.done {
		return w.id, w.ok
	}
	w.done = true
	if w.p.jwt == nil {
		return w.id, false
	}
	id, err := w.p.jwt.Identify(w.r, w.now())
	if err != nil {
		if !errors.Is(err, identity.ErrNoToken) {
			w.d.InvalidToken = true
		}
		return w.id, false
	}
	w.id, w.ok = id, true
	w.d.Identity = id.Subject
	return id, true
}

// key takes a header, token or cookie rule's key from the request (collect
// takes the address keys); false when it is absent.
// byAddress reports whether the rule's key comes from the request's
// address or headers alone, with no identity to verify.
func (ru *rule) byAddress() bool {
	switch ru.kind {
	case keyIP, keySubnet, keyGlobal, keyHeader:
		return true
	}
	return false
}

// addressKey returns the key of a rule that byAddress: ip is the resolved
// client address, valid when hasIP.
func (ru *rule) addressKey(r *http.Request, ip netip.Addr, hasIP bool) (keys.Key, bool) {
	switch ru.kind {
	case keyIP:
		return keys.IP(ip), hasIP
	case keySubnet:
		return keys.Subnet(ip, ru.v4, ru.v6), hasIP
	case keyGlobal:
		return keys.Global(), true
	case keyHeader:
		return keys.HeaderValue(r, ru.param)
	}
	return keys.Key{}, false
}

func (ru *rule) key(r *http.Request, who *requestIdentity) (keys.Key, bool) {
	switch ru.kind {
	case keyHeader:
		return keys.HeaderValue(r, ru.param)
	case keyJWT:
		id, ok := who.get()
		if !ok {
			return keys.Key{}, false
		}
		if ru.param == "" {
			return id.Key(), true
		}
		v, ok := id.Claim(ru.param)
		if !ok || v == "" {
			return keys.Key{}, false
		}
		return keys.BoundedString(v), true
	case keyCookie:
		if ru.cookie == nil {
			return keys.Key{}, false
		}
		k, ok := ru.cookie.Identify(r)
		if !ok && ru.cookie.Verify != nil && who.d != nil && ru.cookie.Present(r) {
			who.d.InvalidToken = true // present, refused by Verify
		}
		return k, ok
	}
	return keys.Key{}, false
}
