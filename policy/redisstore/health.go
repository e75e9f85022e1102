package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// minConfirm is the least budget of the PING that confirms a timeout.
const minConfirm = 250 * time.Millisecond

// Kinds of store error, the values of ErrorsByKind's keys.
const (
	kindTimeout     = iota // the call's budget ran out
	kindUnreachable        // connection refused, reset or closed
	kindMoved              // MOVED/ASK: a Cluster node used as a plain node
	kindReadonly           // READONLY: a replica (failover under way)
	kindLoading            // LOADING: Redis is loading its data
	kindOOM                // OOM: maxmemory reached
	kindRefused            // NOAUTH, WRONGPASS, NOPERM
	kindOther
	kindOverload // no pooled connection within the budget; the call was not made
	numKinds
)

var kindNames = [numKinds]string{"timeout", "unreachable", "moved", "readonly", "loading", "oom", "refused", "other", "overload"}

// classify names the kind of a failed call's error.
func classify(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return kindTimeout
	case redis.HasErrorPrefix(err, "MOVED"), redis.HasErrorPrefix(err, "ASK"):
		return kindMoved
	case redis.HasErrorPrefix(err, "READONLY"):
		return kindReadonly
	case redis.HasErrorPrefix(err, "LOADING"):
		return kindLoading
	case redis.HasErrorPrefix(err, "OOM"):
		return kindOOM
	case refused(err):
		return kindRefused
	}
	var op *net.OpError
	if errors.As(err, &op) || errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrClosed) || strings.Contains(err.Error(), "EOF") {
		return kindUnreachable
	}
	return kindOther
}

// succeeded and failed report a call's outcome to the breaker and the log.
func (s *Store) succeeded() {
	if s.br.success() {
		s.logs.event(s.log, evClosed, slog.LevelInfo, "redisstore: Redis answers again; circuit closed")
	}
}

// failed counts a failed call. A timeout while the breaker is closed does
// not count towards opening it by itself: it may be this host that was too
// slow (scheduler, GC, CPU starved), not Redis. A PING with a longer budget
// (confirm) decides: if Redis answers it, the timeout was ours; if not, the
// breaker opens at once. Other errors count directly.
func (s *Store) failed(op string, err error) {
	s.errs.Add(1)
	k := classify(err)
	s.byKind[k].Add(1)
	if k == kindMoved {
		s.logs.event(s.log, evMoved, slog.LevelError, "redisstore: Redis answered MOVED: the address is a Redis Cluster node; list the cluster's nodes in state.redis.addrs (two or more select the cluster client) and use a prefix with a hash tag such as \"{wslimit}:\"",
			slog.String("error", err.Error()))
	}
	if k == kindTimeout && !s.br.isOpen() {
		s.confirmAsync(op, err)
		return
	}
	s.countFailure(op, err, false)
}

// countFailure tells the breaker; trip opens it at once.
func (s *Store) countFailure(op string, err error, trip bool) {
	now := time.Now()
	var opened bool
	if trip {
		opened = s.br.trip(now)
	} else {
		opened = s.br.failure(now)
	}
	if opened {
		s.outageSeen()
		s.logs.event(s.log, evOpened, slog.LevelWarn, "redisstore: circuit open; applying on_error",
			slog.String("op", op), slog.String("error", err.Error()),
			slog.String("on_error", s.onError.String()), slog.Duration("cooldown", s.br.cooldown))
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "redisstore: call failed",
		slog.String("op", op), slog.String("error", err.Error()))
}

// confirmAsync pings Redis, once at a time, to tell a slow Redis from a
// slow host.
func (s *Store) confirmAsync(op string, err error) {
	if !s.confirming.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.confirming.Store(false)
		ctx, cancel := context.WithTimeout(s.ctx, s.confirm)
		defer cancel()
		perr := s.client.Ping(ctx).Err()
		switch {
		case perr == nil:
			s.log.LogAttrs(ctx, slog.LevelDebug, "redisstore: a call timed out but Redis answers: not counted against Redis",
				slog.String("op", op), slog.String("error", err.Error()))
		case s.ctx.Err() == nil:
			s.countFailure(op, err, true)
		}
	}()
}

// acquireFor is acquire with a wait of its own.
func (s *Store) acquireFor(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	s.byKind[kindOverload].Add(1)
	return false
}

// latencyBounds are the upper bounds, in seconds, of the store call
// latency histogram: 100µs to 1s.
var latencyBounds = []float64{1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1}

// latency is a histogram of call durations, updated without a lock.
type latency struct {
	counts [14]atomic.Uint64 // per bound of latencyBounds, then +Inf
	sumNS  atomic.Int64
}

func (l *latency) observe(d time.Duration) {
	sec := d.Seconds()
	i := 0
	for i < len(latencyBounds) && sec > latencyBounds[i] {
		i++
	}
	l.counts[i].Add(1)
	l.sumNS.Add(int64(d))
}

// Health reports the store's health for metrics (pass the method value as
// prom.Options.Health).
// It reads counters only; it makes no call to Redis.
func (s *Store) Health() policy.StoreHealth {
	h := policy.StoreHealth{
		OnError:          s.onError.String(),
		BreakerOpen:      s.br.isOpen(),
		Synced:           s.synced(),
		Degraded:         s.degraded.Load(),
		LeasesLost:       s.lostN.Load(),
		LeasesRegistered: s.registeredN.Load(),
		Instances:        int(s.fleet.Load()),
		Errors:           make(map[string]uint64, numKinds),
		LatencyBounds:    latencyBounds,
		LatencyCounts:    make([]uint64, len(latencyBounds)+1),
		LatencySum:       time.Duration(s.lat.sumNS.Load()),
	}
	for i := range s.byKind {
		h.Errors[kindNames[i]] = s.byKind[i].Load()
	}
	for i := range h.LatencyCounts {
		h.LatencyCounts[i] = s.lat.counts[i].Load()
	}
	return h
}

// Events that are logged at most once per eventEvery each (with the
// number of repeats left out).
const (
	evOpened = iota
	evClosed
	evDataLost
	evLeasesLost
	evRegistered
	evMoved
	evFallback
	numEvents
)

const eventEvery = 10 * time.Second

// eventLog rate-limits the store's state-change logs, per event: an
// outage that flaps cannot flood the log.
type eventLog struct {
	mu         sync.Mutex
	last       [numEvents]time.Time
	suppressed [numEvents]int
}

func (e *eventLog) event(log *slog.Logger, ev int, level slog.Level, msg string, attrs ...slog.Attr) {
	now := time.Now()
	e.mu.Lock()
	if !e.last[ev].IsZero() && now.Sub(e.last[ev]) < eventEvery {
		e.suppressed[ev] = min(e.suppressed[ev]+1, math.MaxInt32)
		e.mu.Unlock()
		return
	}
	n := e.suppressed[ev]
	e.last[ev], e.suppressed[ev] = now, 0
	e.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed", n))
	}
	log.LogAttrs(context.Background(), level, msg, attrs...)
}
