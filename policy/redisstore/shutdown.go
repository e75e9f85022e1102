package redisstore

import (
	"context"
	"fmt"
	"time"
)

// Shutdown stops admitting and gives back every slot this instance holds,
// for a graceful stop: Admit fails with ErrClosed from the start of the
// call; Shutdown waits for the Admit and Release calls under way, then
// removes every live lease from Redis in one pipelined round trip (chunks
// of 512 members), with the pending releases, and takes the instance out of
// the registry, so that the other instances can use the capacity at once;
// then it closes the store as Close does. Every step is bounded by ctx (by
// max(Timeout, RefreshInterval/2) when ctx has no deadline); what does not
// make it in time expires after LeaseTTL, as a crashed instance's leases
// would.
//
// Connections still open lose their slots: close them first (their
// releases are batched here when they have not gone out yet) or right
// after. Release after Shutdown does nothing.
func (s *Store) Shutdown(ctx context.Context) error {
	s.closed.Store(true)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.budget)
		defer cancel()
	}
	s.drain(ctx)
	recs := s.takeAll()
	for _, rec := range recs {
		if rec.fb {
			_ = s.fallback.Release(ctx, rec.fbLease, rec.fbClaims) // in memory: cannot fail
		}
	}
	err := s.syncOnce(ctx, syncLeave)
	if err != nil {
		err = fmt.Errorf("redisstore: shutdown: releasing %d leases: %w", len(recs), err)
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// drain waits until no Admit or Release call is under way, or ctx ends.
func (s *Store) drain(ctx context.Context) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// takeAll forgets every live lease and queues the removal of its members,
// without the bound on pending releases (they go out now).
func (s *Store) takeAll() []*lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := make([]*lease, 0, len(s.leases))
	for _, rec := range s.leases {
		recs = append(recs, rec)
		for _, c := range rec.conns {
			s.pending = append(s.pending, slot{key: c.key, member: rec.member})
		}
		s.pending = append(s.pending, rec.took...)
	}
	clear(s.leases)
	clear(s.held)
	s.unregistered = 0
	clear(s.credit)
	clear(s.maybe)
	return recs
}
