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

// share is this instance's part of a limit n shared by instances live
// instances: n/instances rounded up, so that the fleet's shares add up to
// at most n plus one per instance.
func share(n, instances int) int {
	return (n + instances - 1) / instances
}

// admitLocal decides an admission by this instance's share of every limit:
// a cap's share less the leases this instance already holds under it
// (admitted through Redis or not), and for a bucket the Fallback store
// with the rate and burst divided the same way. The instances are those
// live at the last sync.
func (s *Store) admitLocal(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	n := int(max(s.fleet.Load(), 1))
	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id)}
	s.mu.Lock()
	for i := range claims {
		c := &claims[i]
		if c.Conns <= 0 {
			continue
		}
		ck, _ := s.keys(c)
		if s.held[ck] >= share(c.Conns, n) {
			s.mu.Unlock()
			return policy.Lease{}, policy.Verdict{Index: i, Reason: policy.ReasonConnections}, nil
		}
		rec.conns = append(rec.conns, connSlot{key: ck})
	}
	s.trackLocked(id, rec)
	s.mu.Unlock()

	fbClaims, index := shareClaims(claims, n)
	if len(fbClaims) > 0 {
		l, v, err := s.fallback.Admit(ctx, now, fbClaims)
		if err != nil || !v.OK {
			s.untrack(id)
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

// trackLocked records rec as live if it holds anything; s.mu is held.
func (s *Store) trackLocked(id uint64, rec *lease) {
	if _, ok := s.leases[id]; ok || (len(rec.conns) == 0 && !rec.fb) {
		return
	}
	s.leases[id] = rec
	for _, c := range rec.conns {
		s.held[c.key]++
	}
}

// shareClaims returns the rate claims of claims with their rate and burst
// divided among instances (the burst rounded up, at least 1), for the
// Fallback store, and for each the index of its claim in claims.
func shareClaims(claims []policy.Claim, instances int) ([]policy.Claim, []int) {
	var out []policy.Claim
	var index []int
	for i := range claims {
		c := &claims[i]
		if !hasRate(c) {
			continue
		}
		lim := c.Limit / rate.Limit(instances)
		out = append(out, policy.Claim{Rule: c.Rule, Key: c.Key, Limit: lim, Burst: max(share(c.Burst, instances), 1)})
		index = append(index, i)
	}
	return out, index
}
