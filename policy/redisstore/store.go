package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
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

// maxResyncs bounds the syncs one admission waits for when the script
// keeps finding a new epoch; maxRecoveryWaits bounds its retries while
// Redis recovers from a data loss.
const (
	maxResyncs       = 2
	maxRecoveryWaits = 4
)

// maxPending bounds the releases kept for retry while Redis is unreachable.
// Beyond it a release is dropped: its member keeps its slot for as long as
// this instance vouches for the lease set (while it holds another lease
// there, and LeaseTTL after), or until Redis loses it.
const maxPending = 1 << 16

// refreshChunk is the number of lease members registered, or of lease
// sets audited, by one script call.
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
	// FailLocal admits under a cap only into slots that Redis still
	// counts for this instance (connections of the same key released while
	// Redis could not hear it), so the fleet never holds more than Redis
	// counted; a bucket gets this instance's share of its rate and burst
	// among the live instances (through Options.Fallback).
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
	// RefreshInterval is how often this instance renews its leases, all
	// in one round trip: one entry per lease set it holds leases in, however
	// many (default LeaseTTL/3; must be below LeaseTTL).
	RefreshInterval time.Duration
	// Timeout bounds each Admit and Release call to Redis (default 50ms),
	// from when it has a pooled connection; waiting for one is bounded by
	// Timeout too. A sync (refresh) gets max(Timeout, RefreshInterval/2).
	Timeout time.Duration
	// OnError says what Admit does when Redis cannot decide (default
	// FailLocal).
	OnError FailMode
	// Fallback is the in-memory store used by FailLocal for buckets, given
	// this instance's share of each rate and burst (caps are shared out by
	// the Store itself); required then. The Store does not close it.
	Fallback policy.Store
	// BreakerFailures is the number of consecutive failed calls that open
	// the circuit breaker (default 3). A timeout counts only when a PING
	// with a budget of max(2×Timeout, 250ms) fails too; then it opens the
	// breaker at once.
	BreakerFailures int
	// BreakerCooldown is how long the open breaker applies OnError without
	// calling Redis before one probe call tries again (default 1s).
	BreakerCooldown time.Duration
	// InstanceID names this instance in lease members, for people reading
	// Redis (default: 12 random hex digits). A non-empty name gets a random
	// suffix, "<name>.<8 hex digits>", so that members stay unique across
	// restarts and among Stores given the same name; ':' and ';' in it
	// become '_'.
	InstanceID string
	// Logger receives breaker transitions and lease losses (default: none).
	Logger *slog.Logger
}

// Stats is a snapshot of a Store's counters, for metrics.
type Stats struct {
	// Live is the number of leases with connection slots this store holds.
	Live int
	// Pending is the number of slot releases waiting for Redis to answer,
	// queued or in a sync under way.
	Pending int
	// Errors counts failed Redis calls (errors and timeouts).
	Errors uint64
	// Degraded counts admissions decided by OnError instead of Redis.
	Degraded uint64
	// Lost counts live leases that a sync found missing from Redis after
	// they had been there (Redis lost data, or they expired while Redis was
	// unreachable). Each was registered again at once.
	Lost uint64
	// Registered counts leases a sync added to Redis: the lost ones and
	// those admitted under OnError while Redis could not decide.
	Registered uint64
	// Dropped counts releases given up because too many were pending; their
	// slots stay taken while this instance holds other leases of the same
	// key, and come back LeaseTTL after its last one there (see maxPending).
	Dropped uint64
	// Instances is the number of live instances in the registry at the last
	// sync (at least 1): the divisor of the local fallback's shares.
	Instances int
	// BreakerOpen reports whether calls currently skip Redis.
	BreakerOpen bool
	// Synced reports whether this instance's live leases are registered
	// under Redis's current epoch, so that Redis may decide admissions.
	Synced bool
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
	budget   time.Duration // sync (refresh) timeout
	confirm  time.Duration // budget of the PING that confirms a timeout
	grace    time.Duration // recovery grace after a data loss
	onError  FailMode
	fallback policy.Store
	instance string
	log      *slog.Logger
	br       breaker
	slots    chan struct{} // one per pooled connection: calls queue here, outside their budget

	nextID                  atomic.Uint64
	errs, degraded, dropped atomic.Uint64
	lostN, registeredN      atomic.Uint64
	byKind                  [numKinds]atomic.Uint64
	lat                     latency
	logs                    eventLog
	confirming              atomic.Bool
	inflight                atomic.Int64 // Admit and Release calls under way (Shutdown waits)

	mu     sync.Mutex
	leases map[uint64]*lease // live leases with slots
	held   map[string]int    // lease set key → live leases counted in Redis (see admitSrc's fresh flag)
	// unregistered counts the live leases not counted in Redis (admitted
	// by on_error), which the next sync registers.
	unregistered int
	pending      []slot         // releases to retry
	credit       map[string]int // pending releases per lease set that Redis surely still counts (counted, not sent)
	maybe        map[string]int // the same, counted and sent once (see slot)
	syncing      int            // syncs between plan and their outcome
	sending      int            // pending releases taken by syncs in flight

	emu      sync.Mutex
	ep       epochState
	want     atomic.Uint64 // bumped when the leases must be registered again
	have     atomic.Uint64 // the want value the last successful sync started from
	lastSync atomic.Int64  // unix ms of the last successful sync
	outage   atomic.Bool   // Redis was out of reach since the last sync
	fleet    atomic.Int64  // live instances at the last sync
	rank     atomic.Int64  // this instance's place among them, by id (for shares)
	fmu      sync.Mutex
	flight   *syncFlight // the sync under way, if any

	rules atomic.Pointer[map[string]struct{}] // rule names seen, for Inspector; copy on write
	insp  inspectCache

	closed    atomic.Bool
	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	done      chan struct{} // closed when the refresher exits
	closeOnce sync.Once
	closeErr  error
}

// lease is what the store remembers of one admission holding slots.
type lease struct {
	member   string     // "<instance>:<id>", the ZSET member in every lease set
	conns    []connSlot // the lease sets it belongs to
	inRedis  bool       // Redis admitted it, or a sync registered it
	fb       bool       // admitted by the fallback store
	fbLease  policy.Lease
	fbClaims []policy.Claim // the share claims given to the fallback
	// took are the slots of released leases that this lease, admitted by
	// on_error local, took over: Redis still counts their members in
	// place of this lease's own until a sync registers it and removes them
	// in the same round trip.
	took []slot
}

// connSlot is one lease set a lease belongs to.
type connSlot struct {
	key string
}

// slot is one member to remove from one lease set.
type slot struct {
	key, member string
	// counted: Redis counted the member when its removal was queued. sent:
	// a removal was sent and failed, so it may have run all the same (a
	// timeout, a connection broken after the write). A local admission
	// takes over a counted slot never sent, or, once the breaker has opened
	// (then the next sync starts a recovery), a counted slot sent (see
	// admitLocal).
	counted, sent bool
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
	pool, err := checkClient(client, o.Prefix)
	if err != nil {
		return nil, err
	}
	s := &Store{
		client:   client,
		sc:       newScripts(),
		prefix:   o.Prefix,
		ttlMS:    o.LeaseTTL.Milliseconds(),
		interval: o.RefreshInterval,
		timeout:  o.Timeout,
		budget:   max(o.Timeout, o.RefreshInterval/2),
		confirm:  max(2*o.Timeout, minConfirm),
		onError:  o.OnError,
		fallback: o.Fallback,
		instance: o.InstanceID,
		log:      o.Logger,
		br:       breaker{threshold: o.BreakerFailures, cooldown: o.BreakerCooldown},
		slots:    make(chan struct{}, pool),
		leases:   make(map[uint64]*lease),
		held:     make(map[string]int),
		credit:   make(map[string]int),
		maybe:    make(map[string]int),
		done:     make(chan struct{}),
	}
	s.grace = o.RefreshInterval + o.BreakerCooldown + s.budget
	s.fleet.Store(1)
	s.want.Store(1) // the first sync registers the epoch
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.start(ctx); err != nil {
		if refused(err) {
			s.cancel()
			return nil, fmt.Errorf("redisstore: loading scripts: %w", err)
		}
		if errors.Is(err, errClusterNode) {
			s.cancel()
			return nil, err
		}
		s.failed("start", err)
		s.log.LogAttrs(ctx, slog.LevelWarn, "redisstore: Redis does not answer at start; applying on_error until it does",
			slog.String("error", err.Error()), slog.String("on_error", s.onError.String()))
	}
	go s.run()
	return s, nil
}

// checkClient refuses a client whose socket reads ignore context deadlines,
// and a sharded client without a hash tag in the prefix. It returns the
// client's pool size (per node).
func checkClient(client redis.UniversalClient, prefix string) (pool int, err error) {
	var ctxTimeouts, sharded bool
	pool = 10 * runtime.GOMAXPROCS(0) // go-redis's default
	switch c := client.(type) {
	case *redis.Client:
		ctxTimeouts, pool = c.Options().ContextTimeoutEnabled, c.Options().PoolSize
	case *redis.ClusterClient:
		ctxTimeouts, sharded, pool = c.Options().ContextTimeoutEnabled, true, c.Options().PoolSize
	case *redis.Ring:
		ctxTimeouts, sharded, pool = c.Options().ContextTimeoutEnabled, true, c.Options().PoolSize
	default:
		ctxTimeouts = true // another implementation: cannot tell
	}
	if !ctxTimeouts {
		return 0, errors.New("redisstore: the client must set ContextTimeoutEnabled, or the timeout budget does not hold")
	}
	if sharded && !hasHashTag(prefix) {
		return 0, fmt.Errorf("redisstore: with Redis Cluster the prefix must contain a hash tag such as \"{wslimit}:\" (got %q)", prefix)
	}
	return max(pool, 1), nil
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
		// ':' and ';' would break the lex range of its members (see
		// admitSrc).
		o.InstanceID = strings.NewReplacer(":", "_", ";", "_").Replace(o.InstanceID) + "." + hex.EncodeToString(b[:4])
	}
	return o, nil
}

// hasHashTag reports whether p contains a non-empty Redis Cluster hash tag.
func hasHashTag(p string) bool {
	i := strings.IndexByte(p, '{')
	return i >= 0 && strings.IndexByte(p[i+1:], '}') > 0
}

// startBudget bounds New's calls to Redis. Nothing waits on them but
// start-up, so they get more than an admission's timeout: setting up a
// connection costs several round trips (TCP, HELLO, CLIENT SETINFO).
const startBudget = time.Second

// warmConns is the most connections New opens ahead of the first
// admissions (fewer if the client's pool is smaller).
const warmConns = 16

// start opens the pool's first connections and sends the scripts to Redis,
// so that calls go out as EVALSHA on connections that are already set up.
// Without the warm-up, the first burst of admissions after start would
// each dial and set up a connection within its own timeout: measured under
// -race on a loaded 2-core machine, those first calls took 25-60 ms against
// well under 1 ms on a set-up connection, and timed out with a healthy
// Redis.
func (s *Store) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(s.timeout, startBudget))
	defer cancel()
	if err := s.warm(ctx); err != nil {
		return err
	}
	if err := s.notClusterNode(ctx); err != nil {
		return err
	}
	for _, sc := range []*redis.Script{s.sc.admit, s.sc.release, s.sc.refresh, s.sc.sync} {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return err
		}
	}
	return s.syncOnce(ctx, syncRefresh)
}

// warm holds up to warmConns connections of a single-node (or Sentinel)
// client at once and pings on each, then hands them back to the pool idle.
// Cluster and Ring clients keep a pool per node and are not warmed.
func (s *Store) warm(ctx context.Context) error {
	c, ok := s.client.(*redis.Client)
	if !ok {
		return nil
	}
	n := min(c.Options().PoolSize, warmConns)
	conns := make([]*redis.Conn, 0, n)
	defer func() {
		for _, cn := range conns {
			_ = cn.Close() // back to the pool
		}
	}()
	for range n {
		cn := c.Conn()
		conns = append(conns, cn)
		if err := cn.Ping(ctx).Err(); err != nil {
			return err
		}
	}
	return nil
}

// keys returns the lease set and bucket keys of a claim:
// <prefix><rule>:{<key>}:l and <prefix><rule>:{<key>}:t (the lease set key
// again when the claim has no bucket, to save building a key); hashOf
// gives the lease set's instance hash, :i. Lease sets were :c, scored by
// expiry, before leases were vouched for per instance, and buckets were
// hashes under :b before they became strings: the new suffixes keep
// instances of both versions, during a rolling upgrade, out of each
// other's way.
func (s *Store) keys(c *policy.Claim) (conn, bucket string) {
	conn = s.prefix + c.Rule + ":{" + c.Key.String() + "}:l"
	if !hasRate(c) {
		return conn, conn // the bucket key is not used
	}
	return conn, conn[:len(conn)-1] + "t"
}

// hashOf returns the instance hash of lease set key conn.
func hashOf(conn string) string { return conn[:len(conn)-1] + "i" }

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
// Redis decides only once this instance's live leases are registered under
// Redis's current epoch: after Redis lost data or was unreachable, the
// first Admit waits (within Options.Timeout) for the sync that registers
// them again, every one, even past a cap.
//
// When Redis fails, times out (Options.Timeout), the breaker is open, or
// the sync does not finish in time, Admit applies Options.OnError and
// returns no error: FailAllow admits, FailDeny refuses with
// policy.ReasonStoreError, FailLocal admits as its documentation says (see
// docs/operations-redis.md). An error is returned only
// when ctx ends first, when the Fallback fails, or after Close or
// Shutdown; nothing is held then.
func (s *Store) Admit(ctx context.Context, now time.Time, claims []policy.Claim) (policy.Lease, policy.Verdict, error) {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
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
	s.noteRules(claims)
	if !s.br.allow(time.Now()) {
		return s.degrade(ctx, now, claims)
	}
	if !s.acquire(ctx) {
		s.br.abandon(time.Now())
		return s.degrade(ctx, now, claims)
	}
	defer s.releaseSlot()
	id := s.nextID.Add(1)
	rec := &lease{member: s.member(id), conns: make([]connSlot, 0, conns), inRedis: true}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res, ep, err := s.decide(cctx, rec, claims)
	if err != nil {
		if ctx.Err() != nil {
			return policy.Lease{}, policy.Verdict{}, fmt.Errorf("redisstore: admit: %w", ctx.Err())
		}
		return s.degrade(ctx, now, claims)
	}
	switch res[0] {
	case 1:
		if len(rec.conns) > 0 {
			s.track(id, rec, ep)
		}
		v := policy.Verdict{OK: true}
		if len(res) == 5 { // not a retry that found its lease committed
			v.Full, v.Empty = uint64(res[1]), uint64(res[2])
			v.RetryAfter = time.Duration(res[3]) * time.Millisecond
		}
		return policy.Lease{ID: id}, v, nil
	case 3:
		return s.degrade(ctx, now, claims)
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

// decide runs the admission script until Redis decides: it first waits for
// a sync when this instance's leases are not registered, registers them
// again when the script finds Redis lost data, and while Redis recovers
// from a loss retries (a quarter of the remaining budget apart) for the
// other instances to register theirs. A reply of 3 left when the budget
// ends means on_error decides. The caller has passed the breaker; decide
// reports the outcome to it. It returns the script's reply and the epoch
// the admission ran under.
func (s *Store) decide(ctx context.Context, rec *lease, claims []policy.Claim) ([]int64, epochState, error) {
	keys, args := s.admitArgs(rec, claims)
	resyncs, waits := 0, 0
	for {
		if !s.synced() {
			if err := s.awaitSync(ctx); err != nil {
				s.br.abandon(time.Now()) // the sync reports its own outcome
				return nil, epochState{}, err
			}
		}
		ep := s.epoch()
		args[2], args[3] = ep.id, ep.seq
		t0 := time.Now()
		res, err := s.sc.admit.Run(ctx, s.client, keys, args...).Int64Slice()
		s.lat.observe(time.Since(t0))
		if err == nil && !validReply(res) {
			err = fmt.Errorf("redisstore: unexpected script reply %v", res)
		}
		if err != nil {
			// The script may have run before the reply was lost: take the
			// member back (its tokens stay spent, which errs toward fewer).
			s.queueRelease(rec, false)
			if ctx.Err() != nil && errors.Is(err, context.Canceled) {
				s.br.abandon(time.Now())
			} else {
				s.failed("admit", err)
			}
			return nil, epochState{}, err
		}
		s.succeeded()
		switch res[0] {
		case 2:
			s.resyncNeeded("admit")
			if resyncs++; resyncs <= maxResyncs {
				continue
			}
			return nil, epochState{}, errors.New("redisstore: epoch keeps changing")
		case 3:
			if d, ok := ctx.Deadline(); ok && waits < maxRecoveryWaits {
				waits++
				time.Sleep(time.Until(d) / 4)
				continue
			}
		}
		s.sawSeq(ep, res[len(res)-1])
		return res, ep, nil
	}
}

func validReply(res []int64) bool {
	switch {
	case len(res) == 1:
		return res[0] == 2
	case len(res) == 2:
		return res[0] == 1 || res[0] == 3
	default:
		return len(res) == 5 && (res[0] == 0 || res[0] == 1)
	}
}

// admitArgs returns the KEYS and ARGV of the admission script for claims
// (see admitSrc) and records in rec the lease sets it will belong to. The
// epoch and sequence (ARGV[3] and [4]) are filled in by the caller.
func (s *Store) admitArgs(rec *lease, claims []policy.Claim) (keys []string, args []any) {
	keys = make([]string, 0, 3+3*len(claims))
	keys = append(keys, s.prefix+"epoch", s.prefix+"seq", s.prefix+"resynced")
	args = make([]any, 0, 5+4*len(claims))
	args = append(args, rec.member, s.ttlMS, "", int64(0), s.instance)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range claims {
		c := &claims[i]
		ck, bk := s.keys(c)
		hk := ck
		// fresh is an int: Go boxes 0 and 1 without allocating.
		capN, perMS, burst, fresh := max(c.Conns, 0), 0.0, 0, 0
		if hasRate(c) {
			perMS, burst = float64(c.Limit)/1000, c.Burst
		}
		if capN > 0 {
			rec.conns = append(rec.conns, connSlot{key: ck})
			hk = hashOf(ck)
			if s.held[ck] == 0 {
				fresh = 1
			}
		}
		keys = append(keys, ck, hk, bk)
		args = append(args, capN, perMS, burst, fresh)
	}
	return keys, args
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
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	rec, drop := s.untrack(l.ID)
	if rec == nil {
		return nil
	}
	var err error
	if rec.fb {
		if e := s.fallback.Release(ctx, rec.fbLease, rec.fbClaims); e != nil {
			err = fmt.Errorf("redisstore: fallback release: %w", e)
		}
	}
	if len(drop) == 0 {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if !s.br.allow(time.Now()) {
		s.queueSlots(drop, false)
		return err
	}
	if !s.acquire(ctx) {
		s.br.abandon(time.Now())
		s.queueSlots(drop, false)
		return err
	}
	defer s.releaseSlot()
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	t0 := time.Now()
	rerr := s.removeMembers(cctx, drop)
	s.lat.observe(time.Since(t0))
	cancel()
	if rerr != nil {
		s.queueSlots(drop, !notDialed(rerr))
		s.failed("release", rerr)
		return err
	}
	s.succeeded()
	return err
}

// removeMembers removes each slot's member from its lease set in one
// round trip. One member goes as a plain ZREM, which costs Redis less than
// the script (BenchmarkReleaseCost: 7.7 against 8.8 µs); several go by the
// script, which costs less than a pipeline of ZREMs on the client (24
// allocations against 39 for four) for about the same Redis time.
func (s *Store) removeMembers(ctx context.Context, drop []slot) error {
	if len(drop) == 1 {
		return s.client.ZRem(ctx, drop[0].key, drop[0].member).Err()
	}
	keys, args := releaseArgs(drop)
	return s.sc.release.Run(ctx, s.client, keys, args...).Err()
}

// releaseArgs returns the KEYS and ARGV of releaseSrc for slots.
func releaseArgs(slots []slot) (keys []string, args []any) {
	keys = make([]string, len(slots))
	args = make([]any, len(slots))
	for i, sl := range slots {
		keys[i], args[i] = sl.key, sl.member
	}
	return keys, args
}

// Close stops the lease refresher and makes Admit fail with ErrClosed. It
// does not release live leases, whose connections may still be open: their
// slots free themselves after LeaseTTL, as a crashed instance's would (use
// Shutdown to free them at once). Release keeps working after Close while
// the client is open. Pending releases are sent once more, best effort.
// Close closes the client only when FromConfig built it, and never closes
// the Fallback store.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		<-s.done
		if s.br.allow(time.Now()) {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			if err := s.syncOnce(ctx, syncPending); err != nil {
				s.log.LogAttrs(ctx, slog.LevelDebug, "redisstore: pending releases not sent at close", slog.String("error", err.Error()))
			}
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

// Snapshot returns the store's counters. (Stats, with a rule, is the
// policy.Inspector method, which reads Redis.)
func (s *Store) Snapshot() Stats {
	s.mu.Lock()
	live, pending := len(s.leases), len(s.pending)+s.sending
	s.mu.Unlock()
	return Stats{
		Live:        live,
		Pending:     pending,
		Errors:      s.errs.Load(),
		Degraded:    s.degraded.Load(),
		Lost:        s.lostN.Load(),
		Registered:  s.registeredN.Load(),
		Dropped:     s.dropped.Load(),
		Instances:   int(s.fleet.Load()),
		BreakerOpen: s.br.isOpen(),
		Synced:      s.synced(),
	}
}

// track records a live lease admitted under epoch ep. An admission that ran
// under an epoch a sync has since replaced may have committed to the data
// that was lost, after the sync had read the live leases: the next
// admission registers them all again first.
func (s *Store) track(id uint64, rec *lease, ep epochState) {
	s.mu.Lock()
	s.leases[id] = rec
	if rec.inRedis {
		s.holdLocked(rec, 1)
	} else {
		s.unregistered++
	}
	s.mu.Unlock()
	if ep.gen != s.epoch().gen {
		s.resyncNeeded("admit raced a sync")
	}
}

// untrack forgets a live lease and returns it (nil if it was not live),
// with the slots its release removes: its own member in each lease set
// (counted when Redis admitted or registered it) and the slots it took
// over (counted: see lease.took).
func (s *Store) untrack(id uint64) (*lease, []slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.leases[id]
	if rec == nil {
		return nil, nil
	}
	delete(s.leases, id)
	if rec.inRedis {
		s.holdLocked(rec, -1)
	} else {
		s.unregistered--
	}
	drop := make([]slot, 0, len(rec.conns)+len(rec.took))
	for _, c := range rec.conns {
		drop = append(drop, slot{key: c.key, member: rec.member, counted: rec.inRedis})
	}
	for _, sl := range rec.took {
		// A sync under way may be removing it: no longer sure.
		sl.counted = s.syncing == 0
		drop = append(drop, sl)
	}
	rec.took = nil
	return rec, drop
}

// holdLocked adds d to the count of leases counted in Redis of each lease
// set of rec; s.mu is held.
func (s *Store) holdLocked(rec *lease, d int) {
	for _, c := range rec.conns {
		if n := s.held[c.key] + d; n > 0 {
			s.held[c.key] = n
		} else {
			delete(s.held, c.key)
		}
	}
}

// queueSlots keeps slots for removal at the next sync; sent says that a
// removal of them was sent and failed.
func (s *Store) queueSlots(drop []slot, sent bool) {
	s.mu.Lock()
	for _, sl := range drop {
		sl.sent = sl.sent || sent
		s.queueLocked(sl)
	}
	s.mu.Unlock()
}

// queueRelease keeps the lease's members for removal at the next refresh;
// counted says that Redis surely still counts them (see slot).
func (s *Store) queueRelease(rec *lease, counted bool) {
	s.mu.Lock()
	for _, c := range rec.conns {
		s.queueLocked(slot{key: c.key, member: rec.member, counted: counted})
	}
	s.mu.Unlock()
}

func (s *Store) queueLocked(sl slot) {
	if len(s.pending) >= maxPending {
		s.dropped.Add(1)
		return
	}
	s.pending = append(s.pending, sl)
	switch {
	case sl.counted && !sl.sent:
		s.credit[sl.key]++
	case sl.counted:
		s.maybe[sl.key]++
	}
}

// takePendingLocked removes and returns every pending release; s.mu is
// held.
func (s *Store) takePendingLocked() []slot {
	p := s.pending
	s.pending = nil
	clear(s.credit)
	clear(s.maybe)
	return p
}

// acquire takes one of the pool's connections for a call, waiting at most
// Options.Timeout: the call's own budget starts once it has a connection,
// so that a queue of admissions longer than the pool is an overload (the
// call is not made; on_error decides) rather than timeouts charged to
// Redis.
func (s *Store) acquire(ctx context.Context) bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
	}
	return s.acquireFor(ctx, s.timeout)
}

func (s *Store) releaseSlot() { <-s.slots }

// notDialed reports whether a call failed for want of a connection to
// Redis (dialling failed), so that nothing of it reached Redis.
func notDialed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
