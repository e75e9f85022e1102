package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy"
)

var _ policy.Store = (*Store)(nil)

// Defaults for the zero fields of Options.
const (
	DefaultPrefix          = "wslimit:"
	DefaultLeaseTTL        = 30 * time.Second
	DefaultTimeout         = 50 * time.Millisecond
	DefaultBreakerFailures = 3
	DefaultBreakerCooldown = time.Second
)

// maxPending bounds the releases kept for retry while Redis is unreachable;
// beyond it a release is dropped and its lease left to expire by TTL.
const maxPending = 1 << 16

// refreshChunk is the number of lease members renewed by one script call.
// A refresh sends all chunks in one pipeline (one round trip); chunking
// keeps each script short so Redis serves other clients between them.
const refreshChunk = 512

// ErrClosed is returned by Admit after Close.
var ErrClosed = errors.New("redisstore: store is closed")

// FailMode says what the store does when Redis cannot decide: it failed,
// timed out, or the circuit breaker is open.
type FailMode uint8

// The failure modes, as written in the policy's on_error.
const (
	// FailLocal delegates the admission to Options.Fallback, an in-memory
	// store with the same policy: limits hold per instance.
	FailLocal FailMode = iota
	// FailAllow admits without limits.
	FailAllow
	// FailDeny refuses with policy.ReasonStoreError.
	FailDeny
)

// String returns the mode as written in a policy file.
func (m FailMode) String() string {
	switch m {
	case FailAllow:
		return "allow"
	case FailDeny:
		return "deny"
	default:
		return "local"
	}
}

// Options configure a Store. The zero value of each field means its
// documented default; the zero Options need a Fallback (OnError is local).
type Options struct {
	// Prefix starts every key (default "wslimit:"). With Redis Cluster it
	// must contain a hash tag, e.g. "{wslimit}:", so that all keys of one
	// admission live in one slot.
	Prefix string
	// LeaseTTL is how long a connection slot outlives its last refresh,
	// and so how long a crashed instance's slots stay taken (default 30s).
	LeaseTTL time.Duration
	// RefreshInterval is how often live leases are renewed, all in one
	// round trip (default LeaseTTL/3; must be below LeaseTTL).
	RefreshInterval time.Duration
	// Timeout bounds each Admit and Release call to Redis (default 50ms).
	// A refresh gets max(Timeout, RefreshInterval/2).
	Timeout time.Duration
	// OnError says what Admit does when Redis cannot decide (default
	// FailLocal).
	OnError FailMode
	// Fallback is the in-memory store used by FailLocal; required then.
	// The Store does not close it.
	Fallback policy.Store
	// BreakerFailures is the number of consecutive failed calls that open
	// the circuit breaker (default 3).
	BreakerFailures int
	// BreakerCooldown is how long the open breaker applies OnError without
	// calling Redis before one probe call tries again (default 1s).
	BreakerCooldown time.Duration
	// InstanceID names this instance in lease members, for people reading
	// Redis (default: 12 random hex digits). A non-empty name gets a random
	// suffix, "<name>.<8 hex digits>", so that members stay unique across
	// restarts and among Stores given the same name.
	InstanceID string
	// Logger receives breaker transitions and lease losses (default: none).
	Logger *slog.Logger
}

// Stats is a snapshot of a Store's counters, for metrics.
type Stats struct {
	// Live is the number of leases with connection slots this store holds.
	Live int
	// Pending is the number of slot releases waiting for Redis to answer.
	Pending int
	// Errors counts failed Redis calls (errors and timeouts).
	Errors uint64
	// Degraded counts admissions decided by OnError instead of Redis.
	Degraded uint64
	// Lost is the number of live leases the last refresh found expired with
	// no room left to take their slot back (Redis was unreachable for longer
	// than LeaseTTL, and others took the slots). Later refreshes keep trying.
	Lost int
	// Dropped counts releases given up because too many were pending; their
	// slots free themselves after LeaseTTL.
	Dropped uint64
	// BreakerOpen reports whether calls currently skip Redis.
	BreakerOpen bool
}

// Store is a policy.Store whose counters and buckets live in Redis, shared
// by every instance that uses the same Redis and prefix. It is safe for
// concurrent use.
type Store struct {
	client   redis.UniversalClient
	own      bool // FromConfig built the client; Close closes it
	sc       scripts
	prefix   string
	ttlMS    int64
	interval time.Duration
	timeout  time.Duration
	budget   time.Duration // refresh timeout
	onError  FailMode
	fallback policy.Store
	instance string
	log      *slog.Logger
	br       breaker

	nextID                  atomic.Uint64
	errs, degraded, dropped atomic.Uint64
	lost                    atomic.Int64
	mu                      sync.Mutex
	leases                  map[uint64]*lease // live leases with slots
	pending                 []slot            // releases to retry
	closed                  atomic.Bool
	ctx                     context.Context // cancelled by Close
	cancel                  context.CancelFunc
	done                    chan struct{} // closed when the refresher exits
	closeOnce               sync.Once
	closeErr                error
}

// lease is what the store remembers of one admission holding slots.
type lease struct {
	member  string     // "<instance>:<id>", the ZSET member in every lease set
	conns   []connSlot // the lease sets it belongs to
	fb      bool       // admitted by the fallback store
	fbLease policy.Lease
}

// connSlot is one lease set a lease belongs to, with the rule's cap.
type connSlot struct {
	key string
	cap int
}

// slot is one member to remove from one lease set.
type slot struct {
	key, member string
}

// New returns a Store on client. It loads the scripts and starts the lease
// refresher; Close stops it. An unreachable or busy Redis does not fail New
// (the store starts degraded, applying OnError, and recovers by itself), but
// a refusal does: bad credentials, missing ACL permissions, no scripting.
// The caller keeps ownership of client.
//
// client must have ContextTimeoutEnabled set when it is a *redis.Client,
// *redis.ClusterClient or *redis.Ring: without it go-redis ignores context
// deadlines on socket reads and the timeout budget would not hold. With a
// *redis.ClusterClient or *redis.Ring, opts.Prefix must contain a hash tag.
func New(ctx context.Context, client redis.UniversalClient, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: nil client")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	var ctxTimeouts, sharded bool
	switch c := client.(type) {
	case *redis.Client:
		ctxTimeouts = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		ctxTimeouts, sharded = c.Options().ContextTimeoutEnabled, true
	case *redis.Ring:
		ctxTimeouts, sharded = c.Options().ContextTimeoutEnabled, true
	default:
		ctxTimeouts = true // another implementation: cannot tell
	}
	if !ctxTimeouts {
		return nil, errors.New("redisstore: the client must set ContextTimeoutEnabled, or the timeout budget does not hold")
	}
	if sharded && !hasHashTag(o.Prefix) {
		return nil, fmt.Errorf("redisstore: with Redis Cluster the prefix must contain a hash tag such as \"{wslimit}:\" (got %q)", o.Prefix)
	}
	s := &Store{
		client:   client,
		sc:       newScripts(),
		prefix:   o.Prefix,
		ttlMS:    o.LeaseTTL.Milliseconds(),
		interval: o.RefreshInterval,
		timeout:  o.Timeout,
		budget:   max(o.Timeout, o.RefreshInterval/2),
		onError:  o.OnError,
		fallback: o.Fallback,
		instance: o.InstanceID,
		log:      o.Logger,
		br:       breaker{threshold: o.BreakerFailures, cooldown: o.BreakerCooldown},
		leases:   make(map[uint64]*lease),
		done:     make(chan struct{}),
	}
	if err := s.load(ctx); err != nil {
		if refused(err) {
			return nil, fmt.Errorf("redisstore: loading scripts: %w", err)
		}
		s.failed("load scripts", err)
		s.log.LogAttrs(ctx, slog.LevelWarn, "redisstore: Redis does not answer at start; applying on_error until it does",
			slog.String("error", err.Error()), slog.String("on_error", s.onError.String()))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s, nil
}

// refused reports whether err is Redis saying no for good (credentials,
// ACL, no scripting), as opposed to being unreachable or busy.
func refused(err error) bool {
	for _, p := range []string{"NOAUTH", "WRONGPASS", "NOPERM"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	var reply redis.Error
	return errors.As(err, &reply) && strings.Contains(reply.Error(), "unknown command")
}

func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.RefreshInterval == 0 {
		o.RefreshInterval = o.LeaseTTL / 3
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BreakerFailures == 0 {
		o.BreakerFailures = DefaultBreakerFailures
	}
	if o.BreakerCooldown == 0 {
		o.BreakerCooldown = DefaultBreakerCooldown
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.LeaseTTL < time.Millisecond:
		return o, fmt.Errorf("redisstore: lease TTL must be at least 1ms (got %v)", o.LeaseTTL)
	case o.RefreshInterval <= 0 || o.RefreshInterval >= o.LeaseTTL:
		return o, fmt.Errorf("redisstore: refresh interval must be positive and below the lease TTL %v (got %v)", o.LeaseTTL, o.RefreshInterval)
	case o.Timeout < 0:
		return o, fmt.Errorf("redisstore: timeout must be positive (got %v)", o.Timeout)
	case o.BreakerFailures < 0:
		return o, fmt.Errorf("redisstore: breaker failures must be positive (got %d)", o.BreakerFailures)
	case o.BreakerCooldown < 0:
		return o, fmt.Errorf("redisstore: breaker cooldown must be positive (got %v)", o.BreakerCooldown)
	case o.OnError > FailDeny:
		return o, fmt.Errorf("redisstore: unknown on_error mode %d", o.OnError)
	case o.OnError == FailLocal && o.Fallback == nil:
		return o, errors.New("redisstore: on_error local needs a Fallback store")
	}
	var b [6]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	if o.InstanceID == "" {
		o.InstanceID = hex.EncodeToString(b[:])
	} else {
		// A restarted instance with the same name must not reuse the
		// members of its previous life, which may still hold slots.
		o.InstanceID += "." + hex.EncodeToString(b[:4])
	}
	return o, nil
}

// hasHashTag reports whether p contains a non-empty Redis Cluster hash tag.
func hasHashTag(p string) bool {
	i := strings.IndexByte(p, '{')
	return i >= 0 && strings.IndexByte(p[i+1:], '}') > 0
}

// load sends the scripts to Redis so that calls go out as EVALSHA.
func (s *Store) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for _, sc := range []*redis.Script{s.sc.admit, s.sc.release, s.sc.refresh} {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return err
		}
	}
	return nil
}

// keys returns the lease set and bucket keys of a claim:
// <prefix><rule>:{<key>}:c and <prefix><rule>:{<key>}:t (the lease set key
// again when the claim has no bucket, to save building a key). Buckets were
// hashes under :b before they became strings: the new suffix keeps
// instances of both versions, during a rolling upgrade, out of each
// other's way (WRONGTYPE).
func (s *Store) keys(c *policy.Claim) (conn, bucket string) {
	conn = s.prefix + c.Rule + ":{" + c.Key.String() + "}:c"
	if !hasRate(c) {
		return conn, conn // the bucket key is not used
	}
	return conn, conn[:len(conn)-1] + "t"
}

func hasRate(c *policy.Claim) bool { return c.Limit > 0 && c.Limit != rate.Inf }

func (s *Store) member(id uint64) string {
	return s.instance + ":" + strconv.FormatUint(id, 10)
}

// Admit grants every claim or none, in one round trip to Redis whatever the
// number of claims. Caps count leases across every instance; buckets refill
// by Redis server time, so now is ignored for Redis state (it is passed on
// to the Fallback store). MaxKeys and RefuseWhenFull do not apply: a Redis
// bucket key expires once its bucket has refilled, and Redis memory is
// bounded by maxmemory (see docs/operations-redis.md).
//
// When Redis fails, times out (Options.Timeout) or the breaker is open,
// Admit applies Options.OnError and returns no error: FailAllow admits,
// FailDeny refuses with policy.ReasonStoreError, FailLocal asks the Fallback
// store. An error is returned only when ctx ends first, when the Fallback
// fails, or after Close; nothing is held then.
func (s *Store) Admit(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	if s.closed.Load() {
		return policy.Lease{}, policy.Verdict{}, ErrClosed
	}
	need, conns := false, 0
	for i := range claims {
		if claims[i].Conns > 0 {
			conns++
		}
		need = need || claims[i].Conns > 0 || hasRate(&claims[i])
	}
	if !need {
		return policy.Lease{ID: s.nextID.Add(1)}, policy.Verdict{OK: true}, nil
	}
	if !s.br.allow(time.Now()) {
		return s.degrade(ctx, now, claims)
	}

	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id), conns: make([]connSlot, 0, conns)}
	keys, args := s.admitArgs(rec, claims)

	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	res, err := s.sc.admit.Run(cctx, s.client, keys, args...).Int64Slice()
	cancel()
	if err == nil && len(res) != 1 && len(res) != 4 {
		err = fmt.Errorf("unexpected script reply %v", res)
	}
	if err != nil {
		// The script may have run before the reply was lost: take the
		// member back (its tokens stay spent, which errs toward fewer).
		s.queueRelease(rec)
		if ctx.Err() != nil {
			s.br.abandon(time.Now())
			return policy.Lease{}, policy.Verdict{}, fmt.Errorf("redisstore: admit: %w", ctx.Err())
		}
		s.failed("admit", err)
		return s.degrade(ctx, now, claims)
	}
	s.succeeded()
	if res[0] == 1 {
		if len(rec.conns) > 0 {
			s.track(id, rec)
		}
		return policy.Lease{ID: id}, policy.Verdict{OK: true}, nil
	}
	v := policy.Verdict{Index: int(res[1]) - 1, Reason: policy.ReasonConnections}
	if res[2] == 2 {
		v.Reason = policy.ReasonRate
		if res[3] > 0 {
			v.RetryAfter = time.Duration(res[3]) * time.Millisecond
		}
	}
	return policy.Lease{}, v, nil
}

// admitArgs returns the KEYS and ARGV of the admission script for claims
// (see admitSrc) and records in rec the lease sets it will belong to.
func (s *Store) admitArgs(rec *lease, claims []policy.Claim) (keys []string, args []any) {
	keys = make([]string, 0, 2*len(claims))
	args = make([]any, 0, 2+3*len(claims))
	args = append(args, rec.member, s.ttlMS)
	for i := range claims {
		c := &claims[i]
		ck, bk := s.keys(c)
		keys = append(keys, ck, bk)
		capN, perMS, burst := max(c.Conns, 0), 0.0, 0
		if hasRate(c) {
			perMS, burst = float64(c.Limit)/1000, c.Burst
		}
		args = append(args, capN, perMS, burst)
		if capN > 0 {
			rec.conns = append(rec.conns, connSlot{key: ck, cap: capN})
		}
	}
	return keys, args
}

// degrade applies OnError to an admission Redis could not decide.
func (s *Store) degrade(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	s.degraded.Add(1)
	var fl policy.Lease
	switch s.onError {
	case FailDeny:
		return policy.Lease{}, policy.Verdict{Reason: policy.ReasonStoreError}, nil
	case FailLocal:
		l, v, err := s.fallback.Admit(ctx, now, claims)
		if err != nil {
			return policy.Lease{}, policy.Verdict{}, fmt.Errorf("redisstore: fallback admit: %w", err)
		}
		if !v.OK {
			return policy.Lease{}, v, nil
		}
		fl = l
	}
	// Admitted without Redis. The lease is tracked like any other: the
	// refresher adds it to Redis when Redis answers again, if its caps have
	// room, so that connections admitted during an outage count afterwards.
	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id), fb: s.onError == FailLocal, fbLease: fl}
	for i := range claims {
		if c := &claims[i]; c.Conns > 0 {
			ck, _ := s.keys(c)
			rec.conns = append(rec.conns, connSlot{key: ck, cap: c.Conns})
		}
	}
	if rec.fb || len(rec.conns) > 0 {
		s.track(id, rec)
	}
	return policy.Lease{ID: id}, policy.Verdict{OK: true}, nil
}

// Release frees the connection slots of an admitted lease, in one round
// trip. Only the first Release of a lease does anything; a lease ID this
// store does not hold is ignored, so a double release cannot free another
// connection's slot. claims are passed on to the Fallback store for leases
// it admitted; the Redis slots are those recorded at admission.
//
// Release ignores the cancellation of ctx (a release must happen even when
// the request that admitted the connection is over) but is bounded by
// Options.Timeout. When Redis fails or the breaker is open, the release is
// kept and retried with the next refresh; the lease also expires by itself
// after LeaseTTL, since nothing refreshes it any more. Such failures are not
// returned (see Stats); an error comes only from the Fallback store.
func (s *Store) Release(ctx context.Context, l policy.Lease, claims []policy.Claim) error {
	s.mu.Lock()
	rec := s.leases[l.ID]
	delete(s.leases, l.ID)
	s.mu.Unlock()
	if rec == nil {
		return nil
	}
	var err error
	if rec.fb {
		if e := s.fallback.Release(ctx, rec.fbLease, claims); e != nil {
			err = fmt.Errorf("redisstore: fallback release: %w", e)
		}
	}
	if len(rec.conns) == 0 {
		return err
	}
	if !s.br.allow(time.Now()) {
		s.queueRelease(rec)
		return err
	}
	keys := make([]string, len(rec.conns))
	args := make([]any, len(rec.conns))
	for i, c := range rec.conns {
		keys[i], args[i] = c.key, rec.member
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	rerr := s.sc.release.Run(cctx, s.client, keys, args...).Err()
	cancel()
	if rerr != nil {
		s.queueRelease(rec)
		s.failed("release", rerr)
		return err
	}
	s.succeeded()
	return err
}

// Close stops the lease refresher and makes Admit fail with ErrClosed. It
// does not release live leases, whose connections may still be open: their
// slots free themselves after LeaseTTL, as a crashed instance's would.
// Release them before Close to free the slots at once (Release keeps
// working after Close while the client is open). Pending releases are sent
// once more, best effort. Close closes the client only when FromConfig built
// it, and never closes the Fallback store.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		<-s.done
		if s.br.allow(time.Now()) {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			s.sync(ctx, false)
			cancel()
		}
		if s.own {
			if err := s.client.Close(); err != nil {
				s.closeErr = fmt.Errorf("redisstore: closing client: %w", err)
			}
		}
	})
	return s.closeErr
}

// Stats returns a snapshot of the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	live, pending := len(s.leases), len(s.pending)
	s.mu.Unlock()
	return Stats{
		Live:        live,
		Pending:     pending,
		Errors:      s.errs.Load(),
		Degraded:    s.degraded.Load(),
		Lost:        int(s.lost.Load()),
		Dropped:     s.dropped.Load(),
		BreakerOpen: s.br.isOpen(),
	}
}

func (s *Store) track(id uint64, rec *lease) {
	s.mu.Lock()
	s.leases[id] = rec
	s.mu.Unlock()
}

// queueRelease keeps the lease's members for removal at the next refresh.
func (s *Store) queueRelease(rec *lease) {
	s.mu.Lock()
	for _, c := range rec.conns {
		s.queueLocked(slot{key: c.key, member: rec.member})
	}
	s.mu.Unlock()
}

func (s *Store) queueLocked(sl slot) {
	if len(s.pending) >= maxPending {
		s.dropped.Add(1)
		return
	}
	s.pending = append(s.pending, sl)
}

// succeeded and failed report a call's outcome to the breaker and the log.
func (s *Store) succeeded() {
	if s.br.success() {
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "redisstore: Redis answers again; circuit closed")
	}
}

func (s *Store) failed(op string, err error) {
	s.errs.Add(1)
	if s.br.failure(time.Now()) {
		s.log.LogAttrs(context.Background(), slog.LevelWarn, "redisstore: circuit open; applying on_error",
			slog.String("op", op), slog.String("error", err.Error()),
			slog.String("on_error", s.onError.String()), slog.Duration("cooldown", s.br.cooldown))
		return
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "redisstore: call failed",
		slog.String("op", op), slog.String("error", err.Error()))
}

// run refreshes live leases every interval until Close.
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
			ctx, cancel := context.WithTimeout(s.ctx, s.budget)
			s.sync(ctx, true)
			cancel()
		}
	}
}

// sync sends, in one round trip, the renewal of every live lease (when
// refresh is set) and every pending release. The caller has passed the
// breaker.
func (s *Store) sync(ctx context.Context, refresh bool) {
	type group struct {
		cap     int
		members []string
	}
	var order []string
	groups := make(map[string]*group)
	s.mu.Lock()
	if refresh {
		for _, rec := range s.leases {
			for _, c := range rec.conns {
				g := groups[c.key]
				if g == nil {
					g = &group{}
					groups[c.key] = g
					order = append(order, c.key)
				}
				g.cap = max(g.cap, c.cap)
				g.members = append(g.members, rec.member)
			}
		}
	}
	pend := s.pending
	s.pending = nil
	s.mu.Unlock()
	if len(order) == 0 && len(pend) == 0 {
		s.br.abandon(time.Now()) // no call made; a probe hands its turn on
		return
	}

	exec := func(eval bool) ([]*redis.Cmd, error) {
		run := func(p redis.Pipeliner, sc *redis.Script, keys []string, args []any) *redis.Cmd {
			if eval {
				return sc.Eval(ctx, p, keys, args...)
			}
			return sc.EvalSha(ctx, p, keys, args...)
		}
		p := s.client.Pipeline()
		var refreshes []*redis.Cmd
		var keys []string
		args := []any{s.ttlMS}
		n := 0
		flush := func() {
			if len(keys) > 0 {
				refreshes = append(refreshes, run(p, s.sc.refresh, keys, args))
			}
			keys, args, n = nil, []any{s.ttlMS}, 0
		}
		for _, k := range order {
			g := groups[k]
			for ms := g.members; len(ms) > 0; {
				take := min(len(ms), refreshChunk-n)
				keys = append(keys, k)
				args = append(args, g.cap, take)
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
		for rest := pend; len(rest) > 0; {
			take := min(len(rest), refreshChunk)
			keys := make([]string, take)
			args := make([]any, take)
			for i, sl := range rest[:take] {
				keys[i], args[i] = sl.key, sl.member
			}
			run(p, s.sc.release, keys, args)
			rest = rest[take:]
		}
		_, err := p.Exec(ctx)
		return refreshes, err
	}
	refreshes, err := exec(false)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		refreshes, err = exec(true) // Redis lost its script cache (restart)
	}
	if err != nil {
		s.mu.Lock()
		for _, sl := range pend {
			s.queueLocked(sl)
		}
		s.mu.Unlock()
		if s.ctx.Err() != nil && ctx.Err() != nil {
			s.br.abandon(time.Now()) // Close cut the call short
			return
		}
		s.failed("refresh", err)
		return
	}
	s.succeeded()

	var lost int64
	readded := 0
	s.mu.Lock()
	for _, c := range refreshes {
		vals, _ := c.Slice()
		n, back, stale := s.refreshResultLocked(vals)
		lost += n
		readded += back
		for _, sl := range stale {
			s.queueLocked(sl)
		}
	}
	s.mu.Unlock()
	if refresh && s.lost.Swap(lost) != lost && lost > 0 {
		s.log.LogAttrs(context.Background(), slog.LevelWarn, "redisstore: leases expired and their slots were taken; those connections no longer count",
			slog.Int64("lost", lost))
	}
	if readded > 0 {
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "redisstore: leases admitted while Redis was unreachable now count in Redis",
			slog.Int("leases", readded))
	}
}

// refreshResultLocked reads one refresh script reply, {lost, key, member,
// key, member, ...} (see refreshSrc): the number of lost slots, the number
// of members put back, and those put back for leases that are no longer
// live (released while the refresh was in flight), which must be taken out
// again. s.mu is held.
func (s *Store) refreshResultLocked(vals []any) (lost int64, readded int, stale []slot) {
	if len(vals) == 0 {
		return 0, 0, nil
	}
	lost, _ = vals[0].(int64)
	for i := 1; i+1 < len(vals); i += 2 {
		k, _ := vals[i].(string)
		m, _ := vals[i+1].(string)
		readded++
		if !s.liveLocked(m) {
			stale = append(stale, slot{key: k, member: m})
		}
	}
	return lost, readded, stale
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
