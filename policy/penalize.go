package policy

import (
	"net/http"
	"net/netip"
	"sync/atomic"

	"github.com/wslimit/wslimit/policy/penalty"
)

// penalties binds a Limiter's penalty engine to its policy: the tables of
// the policy in force, in the order of its penalties.
type penalties struct {
	engine *penalty.Engine
	cur    atomic.Pointer[penaltyBinding]
}

type penaltyBinding struct {
	p      *Policy
	tables []*penalty.Table
}

// bind configures the engine for p: unchanged penalties keep their state.
func (ps *penalties) bind(p *Policy) {
	params := make([]penalty.Params, len(p.penalties))
	for i := range p.penalties {
		params[i] = p.penalties[i].params
	}
	ps.cur.Store(&penaltyBinding{p: p, tables: ps.engine.Configure(params)})
}

// table returns the table of p's i-th penalty; nil while a reload is
// binding a policy other than p and the engine no longer has it.
func (ps *penalties) table(p *Policy, i int) *penalty.Table {
	if b := ps.cur.Load(); b.p == p {
		return b.tables[i]
	}
	return ps.engine.Table(p.penalties[i].params.Name)
}

// banned refuses d when a key of p's penalties is banned: the address and
// header keys when who is nil (before any token is verified), the token
// and cookie keys otherwise. It reports whether it refused.
func (d *Decision) banned(p *Policy, r *http.Request, ip netip.Addr, hasIP bool, who *requestIdentity) bool {
	now := d.l.now()
	for i := range p.penalties {
		s := &p.penalties[i]
		if s.key.byAddress() != (who == nil) {
			continue
		}
		t := d.l.pen.table(p, i)
		if t == nil {
			continue
		}
		k, ok := s.keyOf(r, ip, hasIP, who)
		if !ok {
			continue
		}
		if left, ok := t.Banned(k, now); ok {
			d.refuse(p, s.params.Name, ReasonBanned, left)
			return !d.WouldReject
		}
	}
	return false
}

// judge counts d's offences against p's penalties and, for an admitted
// connection that a penalty follows (short_lived, messages), sets
// d.Offender.
func (l *Limiter) judge(r *http.Request, d *Decision) {
	p := d.p
	if len(p.penalties) == 0 || d.Exempt {
		return
	}
	l.tighten()
	now := l.now()
	who := requestIdentity{p: p, r: r, now: l.now, d: d}
	for i := range p.penalties {
		s := &p.penalties[i]
		kind := s.offence(d)
		invalid := s.invalid && d.InvalidToken
		follow := d.held && (s.shortLived > 0 || s.messages)
		if kind == 0 && !invalid && !follow {
			continue
		}
		t := l.pen.table(p, i)
		k, ok := s.keyOf(r, d.ClientIP, d.ClientIP.IsValid(), &who)
		if t == nil || !ok {
			continue
		}
		if kind != 0 {
			t.Offend(k, kind, now)
		}
		if invalid {
			t.Offend(k, penalty.KindInvalidIdentity, now)
		}
		if follow {
			d.Offender = t.Track(d.Offender, now, k, s.shortLived, s.messages)
		}
	}
}

// tightenFactor scales every penalty's threshold while the pressure
// section's tighten_penalties applies: half as many offences earn a ban.
const tightenFactor = 0.5

// tighten applies the pressure monitor's tighten_penalties to the penalty
// engine (a no-op without a monitor): thresholds are halved while the
// level is above 0 and restored when it falls.
func (l *Limiter) tighten() {
	if l.press == nil {
		return
	}
	f := 1.0
	if l.press.TightenPenalties() {
		f = tightenFactor
	}
	l.pen.engine.SetThresholdFactor(f)
}
