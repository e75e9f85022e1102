package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy"
)

// degrade applies OnError to an admission Redis could not decide. An
// admission it grants is tracked like any other: the next sync registers
// it in Redis, so that connections admitted while Redis could not decide
// count there afterwards.
func (s *Store) degrade(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	s.degraded.Add(1)
	s.logs.event(s.log, evFallback, slog.LevelWarn, "redisstore: Redis cannot decide; admissions decided by on_error",
		slog.String("on_error", s.onError.String()), slog.Bool("breaker_open", s.br.isOpen()))
	switch s.onError {
	case FailDeny:
		return policy.Lease{}, policy.Verdict{Reason: policy.ReasonStoreError}, nil
	case FailLocal:
		return s.admitLocal(ctx, now, claims)
	}
	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id)}
	for i := range claims {
		if c := &claims[i]; c.Conns > 0 {
			ck, _ := s.keys(c)
			rec.conns = append(rec.conns, connSlot{key: ck})
		}
	}
	if len(rec.conns) > 0 {
		s.track(id, rec, s.epoch())
		s.resyncNeeded("admitted without Redis")
	}
	return policy.Lease{ID: id}, policy.Verdict{OK: true}, nil
}

// share is the part of a limit n that the instance of the given rank
// (0-based, among instances live instances sorted by id) gets: n/instances,
// and one more for the first n%instances ranks, so that the parts add up
// to n exactly when the instances agree on who is live.
func share(n, instances, rank int) int {
	if instances < 1 {
		instances = 1
	}
	p := n / instances
	if rank >= 0 && rank < n%instances {
		p++
	}
	return p
}

// admitLocal decides an admission without Redis. Under a cap it admits
// only by taking over a slot that Redis still counts for this instance: a
// lease of the same lease set released while Redis could not hear it, its
// removal not yet sent. This instance's count in Redis never grows by
// admissions Redis did not decide, so the fleet never holds more than Redis
// counted when it stopped deciding (no more than the cap); an instance
// that released nothing admits nothing under a cap. A bucket is shared
// instead: the Fallback store with this instance's share of the rate
// (rate/N) and of the burst (see share), N being the instances live at the
// last sync.
func (s *Store) admitLocal(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id)}
	s.mu.Lock()
	for i := range claims {
		c := &claims[i]
		if c.Conns <= 0 {
			continue
		}
		ck, _ := s.keys(c)
		sl, ok := s.takeCreditLocked(ck)
		if !ok {
			s.giveBackLocked(rec)
			s.mu.Unlock()
			return policy.Lease{}, policy.Verdict{Index: i, Reason: policy.ReasonConnections}, nil
		}
		rec.conns = append(rec.conns, connSlot{key: ck})
		rec.took = append(rec.took, sl)
	}
	s.trackLocked(id, rec)
	s.mu.Unlock()

	fbClaims, index := shareClaims(claims, int(max(s.fleet.Load(), 1)), int(s.rank.Load()))
	if len(fbClaims) > 0 {
		l, v, err := s.fallback.Admit(ctx, now, fbClaims)
		if err != nil || !v.OK {
			s.mu.Lock()
			delete(s.leases, id)
			s.giveBackLocked(rec)
			s.mu.Unlock()
			if err != nil {
				return policy.Lease{}, policy.Verdict{}, fmt.Errorf("redisstore: fallback admit: %w", err)
			}
			v.Index = index[v.Index]
			return policy.Lease{}, v, nil
		}
		s.mu.Lock()
		rec.fb, rec.fbLease, rec.fbClaims = true, l, fbClaims
		s.trackLocked(id, rec)
		s.mu.Unlock()
	}
	if len(rec.conns) > 0 {
		s.resyncNeeded("admitted without Redis")
	}
	return policy.Lease{ID: id}, policy.Verdict{OK: true}, nil
}

// takeCreditLocked takes a pending release of lease set key that Redis
// still counts out of the queue: one never sent, or, while an outage is
// flagged (the next sync starts a recovery, so that no instance admits
// into a slot whose removal did run before this instance has registered
// its leases), one sent once; s.mu is held.
func (s *Store) takeCreditLocked(key string) (slot, bool) {
	sent := false
	switch {
	case s.credit[key] > 0:
	case s.maybe[key] > 0 && s.outage.Load():
		sent = true
	default:
		return slot{}, false
	}
	for i := len(s.pending) - 1; i >= 0; i-- {
		if sl := s.pending[i]; sl.counted && sl.sent == sent && sl.key == key {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			m := s.credit
			if sent {
				m = s.maybe
			}
			if m[key]--; m[key] <= 0 {
				delete(m, key)
			}
			return sl, true
		}
	}
	return slot{}, false
}

// giveBackLocked puts the slots rec took over back in the queue; s.mu is
// held.
func (s *Store) giveBackLocked(rec *lease) {
	for _, sl := range rec.took {
		s.queueLocked(sl)
	}
	rec.took, rec.conns = nil, nil
}

// trackLocked records rec as live if it holds anything; s.mu is held.
func (s *Store) trackLocked(id uint64, rec *lease) {
	if _, ok := s.leases[id]; ok || (len(rec.conns) == 0 && !rec.fb) {
		return
	}
	s.leases[id] = rec
}

// shareClaims returns the rate claims of claims with this instance's
// share of their rate (rate/instances) and burst (share, by rank), for the
// Fallback store, and for each the index of its claim in claims.
func shareClaims(claims []policy.Claim, instances, rank int) ([]policy.Claim, []int) {
	var out []policy.Claim
	var index []int
	for i := range claims {
		c := &claims[i]
		if !hasRate(c) {
			continue
		}
		lim := c.Limit / rate.Limit(instances)
		out = append(out, policy.Claim{Rule: c.Rule, Key: c.Key, Limit: lim, Burst: share(c.Burst, instances, rank)})
		index = append(index, i)
	}
	return out, index
}
