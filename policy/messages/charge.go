package messages

import (
	"net/netip"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// Meter enforces the limits on one connection: the caller charges every
// message (and the bytes of long messages as it reads them) and acts on
// the Result. A Meter is used by the connection's one reading goroutine;
// Close may be called from any goroutine, more than once.
type Meter struct {
	t      *Table
	lim    *Limits // what states were built for; nil: no limits
	ip     netip.Addr
	keyOf  func(rule string) (keys.Key, bool)
	states []state
	size   *counters // of max_size
	closed atomic.Bool
	done   chan struct{}
	// now is the time of the last Stamp; charges use it once stamped.
	now     int64
	stamped bool
	// held are the per-key entries this meter holds; guarded by Table.mu.
	held []*shared
}

// state is one limit's state on this connection.
type state struct {
	own  pair    // per connection
	sh   *shared // per key; nil per connection
	skip bool    // a per-key limit whose rule gave this connection no key
	ctr  *counters
}

// pair is a message bucket and a byte bucket.
type pair struct {
	msgs, bytes bucket
}

// bucket is a token bucket whose rate and size are the limit's; time is
// in nanoseconds of the table's clock. It counts what was spent, so that
// the zero bucket is full and needs no clock to start.
type bucket struct {
	spent float64 // burst - tokens; over burst: a throttle's debt
	last  int64
	burst float64 // the burst spent counts against; 0 in a new bucket
}

// take spends n tokens at now, refilling at rate tokens per nanosecond
// up to burst. A throttle (debt) spends them even when short; otherwise a
// short bucket spends nothing. It returns how long until the bucket is
// out of debt (0 when it had the tokens). A reload's new burst keeps the
// tokens, at most the new burst.
func (b *bucket) take(now int64, n, rate, burst float64, debt bool) int64 {
	// Fast path (inlined): no time passed since the last charge (the
	// messages of one network read share its stamp) and the tokens are
	// there.
	if now == b.last && b.burst == burst && b.spent+n <= burst {
		b.spent += n
		return 0
	}
	return b.takeSlow(now, n, rate, burst, debt)
}

func (b *bucket) takeSlow(now int64, n, rate, burst float64, debt bool) int64 {
	if b.burst != burst {
		if b.burst != 0 {
			b.spent = burst - min(b.burst-b.spent, burst)
		} else {
			b.spent = 0 // a new bucket is full
		}
		b.burst = burst
	}
	if now > b.last {
		b.spent = max(0, b.spent-float64(now-b.last)*rate)
		b.last = now
	}
	if b.spent+n <= burst {
		b.spent += n
		return 0
	}
	wait := int64((b.spent+n-burst)/rate) + 1
	if debt {
		b.spent += n
	}
	return wait
}

// MaxSize returns the max_size of the limits of the meter's last charge
// (0: none), for the reading goroutine.
func (m *Meter) MaxSize() int {
	if m.lim != nil {
		return m.lim.maxSize
	}
	return 0
}

// Chunk returns how many bytes a streaming reader may read between two
// Charge calls (at most the smallest byte burst), for the reading
// goroutine.
func (m *Meter) Chunk() int {
	if m.lim != nil {
		return m.lim.chunk
	}
	return 16 << 10
}

// Done is closed by Close: a throttled reader waits on it with the
// Result's Wait, so that closing the connection ends the wait.
func (m *Meter) Done() <-chan struct{} { return m.done }

// Stamp records the current time for the charges that follow, which then
// use it instead of reading the clock: a reader that sees its network
// reads calls Stamp after each one (and after each throttle wait), so
// that one clock read serves every message a read brought in. A message
// is charged at the time of the read that brought it in or later (after
// a throttle wait), never earlier: a later charge errs toward fewer
// tokens, an earlier one could be credited refill that a full bucket
// would have dropped. For the reading goroutine.
func (m *Meter) Stamp() {
	m.now, m.stamped = m.t.nanos(), true
}

// Message charges one whole message of size bytes: shorthand for
// Charge(1, size), after checking size against max_size (over it: close
// with CloseMessageTooBig, nothing charged).
func (m *Meter) Message(size int) Result {
	if l := m.t.lim.Load(); l != nil && l.maxSize > 0 && size > l.maxSize {
		return m.oversize(l, size)
	}
	return m.Charge(1, size)
}

// Oversize reports a message of size bytes over max_size (a streaming
// reader that counted past it): the Result closes with
// CloseMessageTooBig, or is zero when size is within max_size or the
// policy is dry-run.
func (m *Meter) Oversize(size int) Result {
	l := m.t.lim.Load()
	if l == nil || l.maxSize == 0 || size <= l.maxSize {
		return Result{}
	}
	return m.oversize(l, size)
}

func (m *Meter) oversize(l *Limits, size int) Result {
	if l != m.lim {
		m.rebind(l)
	}
	v := Violation{Limit: sizeLimit, Reason: ReasonSize, Action: ActionClose, ClientIP: m.ip}
	if l.dryRun {
		v.Action = ActionDryRun
	}
	m.size.add(reasonSize, v.Action, 1, size)
	m.report(v)
	if l.dryRun {
		return Result{}
	}
	return Result{Code: CloseMessageTooBig, Reason: "max_size: message over " + strconv.Itoa(l.maxSize) + " bytes"}
}

// Charge charges msgs messages and n bytes to every limit, at the
// table's clock (or the last Stamp). Throttle limits always take the tokens (going into debt) and
// the Result's Wait says how long until the debt is paid; a close limit
// without the tokens takes none and the Result says to close (1008).
func (m *Meter) Charge(msgs, n int) Result {
	l := m.t.lim.Load()
	if l != m.lim {
		m.rebind(l)
	}
	if l == nil || len(l.limits) == 0 {
		return Result{}
	}
	now := m.now
	if !m.stamped {
		now = m.t.nanos()
	}
	var res Result
	for i := range l.limits {
		st := &m.states[i]
		if st.skip {
			continue
		}
		lim := &l.limits[i]
		var wait int64
		var why uint8
		fm, fn := float64(msgs), float64(n)
		if st.sh == nil {
			if st.own.fast(lim, now, fm, fn) {
				continue
			}
			wait, why = st.own.take(lim, now, fm, fn, l.dryRun)
		} else {
			st.sh.mu.Lock()
			if !st.sh.pair.fast(lim, now, fm, fn) {
				wait, why = st.sh.pair.take(lim, now, fm, fn, l.dryRun)
			}
			st.sh.mu.Unlock()
		}
		if why != 0 {
			m.violated(l, lim, st, why, wait, msgs, n, &res)
		}
	}
	return res
}

// Reasons of take, as indices of counters.
const (
	reasonMsgs uint8 = iota + 1
	reasonBytes
	reasonSize
)

// fast spends msgs and n when no time passed since the pair's last
// charge (the messages of one network read share its stamp) and both
// buckets hold the tokens; false sends the charge to take. It is small
// enough to be inlined into Charge.
func (p *pair) fast(lim *limit, now int64, msgs, n float64) bool {
	m, b := &p.msgs, &p.bytes
	if (lim.msgRate == 0 || m.last == now && m.burst == lim.msgBurst && m.spent+msgs <= lim.msgBurst) &&
		(lim.byteRate == 0 || b.last == now && b.burst == lim.byteBurst && b.spent+n <= lim.byteBurst) {
		// A bucket of a limit without that rate counts junk here; it has
		// never been charged (burst 0), so takeSlow starts it afresh.
		m.spent += msgs
		b.spent += n
		return true
	}
	return false
}

// take charges msgs and n to p under lim. It returns the wait (throttle)
// and the reason when over the limit; 0 when within it. A close limit
// and a dry-run meter take nothing from a short bucket (the other bucket
// may have spent: the connection is closing, or the policy only reports).
func (p *pair) take(lim *limit, now int64, msgs, n float64, dry bool) (int64, uint8) {
	var why uint8
	var wm, wb int64
	debt := !lim.close && !dry
	if lim.msgRate > 0 && msgs > 0 {
		if wm = p.msgs.take(now, msgs, lim.msgRateNs, lim.msgBurst, debt); wm > 0 {
			why = reasonMsgs
		}
	}
	if lim.byteRate > 0 && n > 0 {
		if wb = p.bytes.take(now, n, lim.byteRateNs, lim.byteBurst, debt); wb > 0 && why == 0 {
			why = reasonBytes
		}
	}
	if !debt {
		return 0, why
	}
	return max(wm, wb), why
}

// violated counts and reports one limit's violation and folds its action
// into res.
func (m *Meter) violated(l *Limits, lim *limit, st *state, why uint8, wait int64, msgs, n int, res *Result) {
	v := Violation{Limit: lim.name, Reason: ReasonMessages, Action: ActionThrottle, ClientIP: m.ip, Rule: lim.rule}
	if why == reasonBytes {
		v.Reason = ReasonBytes
	}
	switch {
	case l.dryRun:
		v.Action = ActionDryRun
	case lim.close:
		v.Action = ActionClose
		if res.Code == 0 {
			res.Code, res.Reason = ClosePolicyViolation, lim.msgReason
			if why == reasonBytes {
				res.Reason = lim.byteReason
			}
		}
	default:
		v.Wait = time.Duration(wait)
		res.Wait = max(res.Wait, v.Wait)
	}
	if st.sh != nil {
		v.Key = st.sh.id.key
	}
	st.ctr.add(why, v.Action, msgs, n)
	m.report(v)
}

func (m *Meter) report(v Violation) {
	if m.t.onViolation != nil {
		m.t.onViolation(v)
	}
}

// rebind builds the meter's states for l, keeping the buckets of
// per-connection limits that keep their name; per-key entries are taken
// again (the same entry while its key has live connections).
func (m *Meter) rebind(l *Limits) {
	old, oldLim := m.states, m.lim
	m.lim, m.states = l, nil
	var ids []keyID
	var idx []int
	if l != nil {
		m.size = m.t.counters(sizeLimit)
		m.states = make([]state, len(l.limits))
		for i := range l.limits {
			lim := &l.limits[i]
			st := &m.states[i]
			st.ctr = m.t.counters(lim.name)
			if lim.rule == "" {
				st.own = findOwn(oldLim, old, lim.name)
				continue
			}
			k, ok := m.keyOf(lim.rule)
			if !ok {
				st.skip = true
				continue
			}
			ids, idx = append(ids, keyID{limit: lim.name, key: k}), append(idx, i)
		}
	}
	t := m.t
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range m.held {
		t.release(s)
	}
	m.held = m.held[:0]
	for j, id := range ids {
		s := t.acquire(id)
		if m.closed.Load() {
			// Closed meanwhile: charge a private entry, hold nothing.
			t.release(s)
		} else {
			m.held = append(m.held, s)
		}
		m.states[idx[j]].sh = s
	}
}

// findOwn returns the per-connection buckets of the limit named name in
// the old states, or fresh ones.
func findOwn(l *Limits, states []state, name string) pair {
	if l == nil {
		return pair{}
	}
	for i := range l.limits {
		if l.limits[i].name == name && l.limits[i].rule == "" {
			return states[i].own
		}
	}
	return pair{}
}

// Close drops the meter's per-key references (the last connection of a
// key drops its entry) and ends a throttled wait (Done). Only the first
// call does anything.
func (m *Meter) Close() {
	if !m.closed.CompareAndSwap(false, true) {
		return
	}
	close(m.done)
	m.t.mu.Lock()
	defer m.t.mu.Unlock()
	for _, s := range m.held {
		m.t.release(s)
	}
	m.held = nil
}

// counters count one limit's violations by reason and action.
type counters struct {
	name string
	c    [3][3]struct{ msgs, bytes atomic.Uint64 } // [reason-1][action]
}

func actionIndex(a string) int {
	switch a {
	case ActionThrottle:
		return 0
	case ActionClose:
		return 1
	}
	return 2
}

func (c *counters) add(why uint8, action string, msgs, n int) {
	e := &c.c[why-1][actionIndex(action)]
	e.msgs.Add(uint64(msgs))
	e.bytes.Add(uint64(n))
}

// counters returns the counters of the named limit, created on first use
// and kept across reloads.
func (t *Table) counters(name string) *counters {
	if c, ok := (*t.ctrs.Load())[name]; ok {
		return c
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.ctrs.Load()
	if c, ok := old[name]; ok {
		return c
	}
	next := make(map[string]*counters, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	c := &counters{name: name}
	next[name] = c
	t.ctrs.Store(&next)
	return c
}

// Stat counts the violations of one limit with one reason and action.
type Stat struct {
	Limit, Reason, Action string
	// Messages is the number of charges over the limit (for close: the
	// connections closed); Bytes the bytes those charges carried.
	Messages, Bytes uint64
}

// Stats returns every non-zero count, sorted by limit, reason, action.
func (t *Table) Stats() []Stat {
	reasons := [3]string{ReasonMessages, ReasonBytes, ReasonSize}
	actions := [3]string{ActionThrottle, ActionClose, ActionDryRun}
	var out []Stat
	for name, c := range *t.ctrs.Load() {
		for r := range c.c {
			for a := range c.c[r] {
				e := &c.c[r][a]
				if n := e.msgs.Load(); n > 0 {
					out = append(out, Stat{Limit: name, Reason: reasons[r], Action: actions[a], Messages: n, Bytes: e.bytes.Load()})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Limit != b.Limit {
			return a.Limit < b.Limit
		}
		if a.Reason != b.Reason {
			return a.Reason < b.Reason
		}
		return a.Action < b.Action
	})
	return out
}
