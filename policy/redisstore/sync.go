package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// metaTTL is the expiry of the epoch and sequence keys, renewed by every
// sync of every instance: they outlive any idle period that still has live
// leases, and vanish some time after the last instance is gone.
const metaTTL = 24 * time.Hour

// epochState is what this instance knows of Redis's epoch (see syncSrc).
type epochState struct {
	id  string // the epoch its leases are registered under ("" before the first sync)
	seq int64  // the highest sequence number seen under it
	gen uint64 // bumped when a sync found a new epoch or lost data
}

// syncMode says what a sync sends.
type syncMode uint8

const (
	syncRefresh syncMode = iota // epoch check, heartbeat, every lease set held (audited or registered), pending releases
	syncPending                 // pending releases only
	syncLeave                   // epoch check, leaving the registry, pending releases (Shutdown)
)

// syncFlight is one sync under way, which admissions and the refresher
// wait for together.
type syncFlight struct {
	done chan struct{}
	err  error
}

// synced reports whether Redis may decide admissions: the last sync
// registered every live lease under the current epoch, no loss has been
// noticed since, and it is recent enough that none of those leases can have
// expired.
func (s *Store) synced() bool {
	if s.have.Load() != s.want.Load() {
		return false
	}
	age := time.Now().UnixMilli() - s.lastSync.Load()
	if age >= s.ttlMS-s.interval.Milliseconds()/2 {
		s.outage.Store(true) // its leases may have expired, and others' too
		return false
	}
	return true
}

// outageSeen makes the next sync start a recovery: while this instance
// could not reach Redis, leases (its own, and those of the others if they
// were cut off too) may have expired.
func (s *Store) outageSeen() {
	s.outage.Store(true)
	s.resyncNeeded("outage")
}

// resyncNeeded makes the next admission wait for a sync.
func (s *Store) resyncNeeded(why string) {
	s.want.Add(1)
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "redisstore: leases to be registered again", slog.String("why", why))
}

func (s *Store) epoch() epochState {
	s.emu.Lock()
	defer s.emu.Unlock()
	return s.ep
}

// sawSeq records a sequence number an admission under ep saw.
func (s *Store) sawSeq(ep epochState, seq int64) {
	s.emu.Lock()
	if s.ep.gen == ep.gen && seq > s.ep.seq {
		s.ep.seq = seq
	}
	s.emu.Unlock()
}

// awaitSync waits for a sync, starting one unless one is under way. The
// sync runs with its own budget (max(Timeout, RefreshInterval/2)): when ctx
// ends first it goes on, so that the next admission finds it done.
func (s *Store) awaitSync(ctx context.Context) error {
	s.fmu.Lock()
	f := s.flight
	if f == nil {
		f = &syncFlight{done: make(chan struct{})}
		s.flight = f
		go s.fly(f)
	}
	s.fmu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) fly(f *syncFlight) {
	ctx, cancel := context.WithTimeout(s.ctx, s.budget)
	f.err = s.syncOnce(ctx, syncRefresh)
	cancel()
	s.fmu.Lock()
	s.flight = nil
	s.fmu.Unlock()
	close(f.done)
}

// run syncs every interval until Close: the heartbeat, the epoch check and
// the renewal of every lease set holding a live lease, in one round trip.
func (s *Store) run() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if !s.br.allow(time.Now()) {
				continue
			}
			if err := s.awaitSync(s.ctx); err != nil && s.ctx.Err() != nil {
				s.br.abandon(time.Now())
			}
		}
	}
}

// syncPlan is what one sync sends.
type syncPlan struct {
	mode   syncMode
	full   bool // register every live lease (refreshSrc); else audit the lease sets (auditSrc)
	ep     epochState
	order  []string            // lease set keys, in order
	counts []int               // audit: the live leases held in order[i]
	groups map[string][]string // registration: lease set key → live members
	recs   []*lease            // registration: the live leases read
	pend   []slot              // the pending releases it took (Stats.Pending counts them until settled)
	took   []slot              // the slots the live leases took over, removed as they are registered
	outage bool                // this instance could not reach Redis since its last sync
	back   bool                // pend was put back in the queue
}

// syncOnce sends, in one round trip: the epoch check and heartbeat
// (syncSrc), the keep-alive of every lease set holding a live lease, and
// every pending release. The keep-alive is an audit of each set (auditSrc,
// chunks of refreshChunk sets), or, when leases may be missing from Redis
// (a resync is wanted, an outage, leases admitted under on_error), the
// registration of every live lease (refreshSrc, chunks of refreshChunk
// members). An audit that finds members missing registers those sets'
// leases in a second round trip.
func (s *Store) syncOnce(ctx context.Context, mode syncMode) error {
	gen := s.want.Load()
	plan := s.plan(mode, gen)
	defer s.syncDone(&plan)
	if mode == syncPending && len(plan.pend) == 0 {
		return nil
	}
	if !s.acquireFor(ctx, s.budget) {
		s.br.abandon(time.Now()) // a probe without a connection tells nothing: hand it on
		s.requeue(&plan, false)
		return errors.New("redisstore: no connection for the sync")
	}
	t0 := time.Now()
	head, regs, audits, err := s.exec(ctx, plan, false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		head, regs, audits, err = s.exec(ctx, plan, true) // Redis lost its script cache (restart)
	}
	s.lat.observe(time.Since(t0))
	recs := plan.recs
	if err == nil {
		if miss := missingSets(audits, plan.order); len(miss) > 0 {
			reg := s.gather(miss)
			regs, err = s.registerSets(ctx, reg)
			recs = reg.recs
		}
	}
	s.releaseSlot()
	if err != nil {
		s.requeue(&plan, !notDialed(err))
		if s.ctx.Err() != nil && ctx.Err() != nil {
			s.br.abandon(time.Now()) // Close cut the call short
			return err
		}
		s.failed("sync", err)
		return err
	}
	s.succeeded()
	if head != nil {
		if err := s.readHead(head, plan); err != nil {
			return err
		}
	}
	s.readRegistrations(regs, recs)
	if mode == syncRefresh {
		if plan.outage {
			s.outage.Store(false)
		}
		s.lastSync.Store(time.Now().UnixMilli())
		for h := s.have.Load(); h < gen && !s.have.CompareAndSwap(h, gen); h = s.have.Load() {
		}
	}
	return nil
}

// plan reads what a sync of mode sends and takes the pending releases.
// A refresh audits the lease sets this instance holds leases in, or
// registers every live lease when some may be missing from Redis: a resync
// is wanted (the last sync to register them started before gen), an outage
// was seen, or leases were admitted without Redis.
func (s *Store) plan(mode syncMode, gen uint64) syncPlan {
	p := syncPlan{mode: mode, ep: s.epoch(), outage: s.outage.Load() && mode == syncRefresh}
	s.mu.Lock()
	defer s.mu.Unlock()
	if mode == syncRefresh {
		p.full = p.outage || s.have.Load() != gen || s.unregistered > 0
		if p.full {
			p.gatherLocked(s.leases, nil)
		} else {
			for k, n := range s.held {
				p.order = append(p.order, k)
				p.counts = append(p.counts, n)
			}
		}
	}
	p.pend = s.takePendingLocked()
	s.sending += len(p.pend)
	s.syncing++
	return p
}

// gather returns a registration plan of the live leases in the lease sets
// only.
func (s *Store) gather(only []string) syncPlan {
	set := make(map[string]bool, len(only))
	for _, k := range only {
		set[k] = true
	}
	var p syncPlan
	s.mu.Lock()
	p.gatherLocked(s.leases, set)
	s.mu.Unlock()
	return p
}

// gatherLocked fills the registration fields of p from leases: every
// lease set (only nil) or those in only. s.mu is held.
func (p *syncPlan) gatherLocked(leases map[uint64]*lease, only map[string]bool) {
	p.groups = map[string][]string{}
	for _, rec := range leases {
		in := only == nil
		for _, c := range rec.conns {
			if only != nil && !only[c.key] {
				continue
			}
			in = true
			if _, ok := p.groups[c.key]; !ok {
				p.order = append(p.order, c.key)
			}
			p.groups[c.key] = append(p.groups[c.key], rec.member)
		}
		if in {
			p.recs = append(p.recs, rec)
			p.took = append(p.took, rec.took...)
		}
	}
}

// syncDone ends what plan started: the sync is over, its releases sent or
// put back.
func (s *Store) syncDone(p *syncPlan) {
	s.mu.Lock()
	s.syncing--
	if !p.back {
		s.sending -= len(p.pend)
	}
	s.mu.Unlock()
}

// requeue puts back the releases of a failed sync; sent as in queueSlots.
func (s *Store) requeue(p *syncPlan, sent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sending -= len(p.pend)
	p.back = true
	for _, sl := range p.pend {
		sl.sent = sl.sent || sent
		s.queueLocked(sl)
	}
}

// runner calls a script on a pipeline, by EVALSHA or (eval) EVAL.
type runner func(p redis.Pipeliner, sc *redis.Script, keys []string, args []any) *redis.Cmd

func (s *Store) runner(ctx context.Context, eval bool) runner {
	return func(p redis.Pipeliner, sc *redis.Script, keys []string, args []any) *redis.Cmd {
		if eval {
			return sc.Eval(ctx, p, keys, args...)
		}
		return sc.EvalSha(ctx, p, keys, args...)
	}
}

// exec sends the plan as one pipeline, with EVAL instead of EVALSHA when
// eval is set. head is the syncSrc call (nil for syncPending), regs the
// refreshSrc calls and audits the auditSrc calls (one of the two is empty).
func (s *Store) exec(ctx context.Context, plan syncPlan, eval bool) (head *redis.Cmd, regs, audits []*redis.Cmd, err error) {
	run := s.runner(ctx, eval)
	p := s.client.Pipeline()
	if plan.mode != syncPending {
		head = run(p, s.sc.sync, s.metaKeys(), s.syncArgs(plan))
	}
	if plan.full {
		regs = s.addRegistrations(p, run, plan, plan.order)
	} else {
		for chunk := range slices.Chunk(plan.order, refreshChunk) {
			keys := make([]string, 0, 2*len(chunk))
			args := make([]any, 0, 2+len(chunk))
			args = append(args, s.ttlMS, s.instance)
			for i, k := range chunk {
				keys = append(keys, k, hashOf(k))
				args = append(args, plan.counts[len(audits)*refreshChunk+i])
			}
			audits = append(audits, run(p, s.sc.audit, keys, args))
		}
	}
	for rest := append(plan.took, plan.pend...); len(rest) > 0; {
		take := min(len(rest), refreshChunk)
		keys, args := releaseArgs(rest[:take])
		run(p, s.sc.release, keys, args)
		rest = rest[take:]
	}
	_, err = p.Exec(ctx)
	return head, regs, audits, err
}

// addRegistrations queues on p the registration of the live leases of
// the lease sets sets (refreshSrc), in chunks of refreshChunk members.
func (s *Store) addRegistrations(p redis.Pipeliner, run runner, plan syncPlan, sets []string) (regs []*redis.Cmd) {
	var keys []string
	args := []any{s.ttlMS, s.instance}
	n := 0
	flush := func() {
		if len(keys) > 0 {
			regs = append(regs, run(p, s.sc.refresh, keys, args))
		}
		keys, args, n = nil, []any{s.ttlMS, s.instance}, 0
	}
	for _, k := range sets {
		for ms := plan.groups[k]; len(ms) > 0; {
			take := min(len(ms), refreshChunk-n)
			keys = append(keys, k, hashOf(k))
			args = append(args, take)
			for _, m := range ms[:take] {
				args = append(args, m)
			}
			ms, n = ms[take:], n+take
			if n >= refreshChunk {
				flush()
			}
		}
	}
	flush()
	return regs
}

// missingSets reads the auditSrc replies: the lease sets of order (audited
// in chunks of refreshChunk) missing some of this instance's live leases.
func missingSets(audits []*redis.Cmd, order []string) []string {
	var miss []string
	for c, cmd := range audits {
		idx, _ := cmd.Int64Slice()
		for _, x := range idx {
			if i := c*refreshChunk + int(x) - 1; x >= 1 && i < len(order) {
				miss = append(miss, order[i])
			}
		}
	}
	return miss
}

// registerSets registers the live leases of plan (lease sets found
// missing some by an audit) in a second round trip.
func (s *Store) registerSets(ctx context.Context, plan syncPlan) ([]*redis.Cmd, error) {
	send := func(eval bool) ([]*redis.Cmd, error) {
		p := s.client.Pipeline()
		regs := s.addRegistrations(p, s.runner(ctx, eval), plan, plan.order)
		_, err := p.Exec(ctx)
		return regs, err
	}
	regs, err := send(false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		regs, err = send(true)
	}
	return regs, err
}

func (s *Store) metaKeys() []string {
	return []string{s.prefix + "epoch", s.prefix + "seq", s.prefix + "resynced", s.prefix + "instances"}
}

func (s *Store) syncArgs(plan syncPlan) []any {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	leave, outage := "0", "0"
	if plan.mode == syncLeave {
		leave = "1"
	}
	if plan.outage {
		outage = "1"
	}
	return []any{plan.ep.id, plan.ep.seq, hex.EncodeToString(b[:]), s.instance,
		s.ttlMS, s.grace.Milliseconds(), s.fleet.Load(), metaTTL.Milliseconds(), leave, outage}
}

// readHead reads the syncSrc reply {epoch, sequence, instances, lost,
// recovering, rank} into the epoch state.
func (s *Store) readHead(head *redis.Cmd, plan syncPlan) error {
	vals, err := head.Slice()
	if err == nil && len(vals) != 6 {
		err = errors.New("redisstore: unexpected sync reply")
	}
	if err != nil {
		return err
	}
	id, _ := vals[0].(string)
	seq, _ := vals[1].(int64)
	live, _ := vals[2].(int64)
	lost, _ := vals[3].(int64)
	recovering, _ := vals[4].(int64)
	rank, _ := vals[5].(int64)
	s.emu.Lock()
	changed := id != s.ep.id
	if changed || lost == 1 {
		s.ep.gen++
	}
	s.ep.id, s.ep.seq = id, seq
	s.emu.Unlock()
	if plan.mode != syncLeave {
		s.fleet.Store(max(live, 1))
		s.rank.Store(rank)
	}
	if lost == 1 {
		s.logs.event(s.log, evDataLost, slog.LevelWarn,
			"redisstore: Redis lost data (restarted empty, flushed, or failed over to a replica that missed writes); live leases registered again",
			slog.Int("leases", s.Snapshot().Live), slog.Bool("recovering", recovering == 1))
	}
	return nil
}

// readRegistrations reads the refreshSrc replies {key, added member, ...}:
// each added member was missing from Redis. A member of a lease that is no
// longer live (released while the sync was in flight) is taken out again.
func (s *Store) readRegistrations(regs []*redis.Cmd, recs []*lease) {
	var lost, added uint64
	s.mu.Lock()
	missing := map[string]bool{}
	for _, c := range regs {
		vals, _ := c.Slice()
		for i := 0; i+1 < len(vals); i += 2 {
			k, _ := vals[i].(string)
			m, _ := vals[i+1].(string)
			missing[m] = true
			if !s.liveLocked(m) {
				s.queueLocked(slot{key: k, member: m, counted: true})
			}
		}
	}
	for _, rec := range recs {
		if missing[rec.member] && rec.inRedis {
			lost++
		}
		if !rec.inRedis && s.liveLocked(rec.member) {
			s.holdLocked(rec, 1)
			s.unregistered--
		}
		rec.inRedis = true
		rec.took = nil // removed in the same round trip
	}
	added = uint64(len(missing))
	s.mu.Unlock()
	s.lostN.Add(lost)
	s.registeredN.Add(added)
	if lost > 0 {
		s.logs.event(s.log, evLeasesLost, slog.LevelWarn, "redisstore: live leases were missing from Redis and are registered again (counted even past their caps)",
			slog.Uint64("lost", lost))
	} else if added > 0 {
		s.logs.event(s.log, evRegistered, slog.LevelInfo, "redisstore: leases admitted while Redis could not decide now count in Redis",
			slog.Uint64("leases", added))
	}
}

// liveLocked reports whether member names a live lease of this store.
func (s *Store) liveLocked(member string) bool {
	rest, ok := strings.CutPrefix(member, s.instance+":")
	if !ok {
		return false
	}
	id, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return false
	}
	_, ok = s.leases[id]
	return ok
}
