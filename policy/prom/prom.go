package prom

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wslimit/wslimit/policy"
)

// DefaultNamespace prefixes every metric name unless Options.Namespace says
// otherwise.
const DefaultNamespace = "wslimit"

// DefaultBuckets are the decision latency histogram's upper bounds in
// seconds, from 1µs to 100ms: an in-memory decision takes about a
// microsecond, a Redis one a round trip (typically 50–100µs on a LAN), and
// anything near the top is a store in trouble.
var DefaultBuckets = []float64{
	1e-6, 2.5e-6, 5e-6,
	1e-5, 2.5e-5, 5e-5,
	1e-4, 2.5e-4, 5e-4,
	1e-3, 2.5e-3, 5e-3,
	1e-2, 2.5e-2, 5e-2,
	0.1,
}

// Results of a decision: the values of the result label of
// wslimit_decisions_total.
const (
	ResultAdmitted    = "admitted"
	ResultRejected    = "rejected"
	ResultExempt      = "exempt"
	ResultWouldReject = "dry_run_would_reject"
)

// Options configure an Observer. The zero value is usable: namespace
// "wslimit", DefaultBuckets, no store gauges, no store error counter.
type Options struct {
	// Namespace prefixes every metric name ("" means DefaultNamespace).
	Namespace string
	// ConstLabels are added to every metric, e.g. to tell two guards of
	// one process apart. Never put a client key here.
	ConstLabels prometheus.Labels
	// Buckets are the upper bounds, in seconds, of the decision latency
	// histogram (nil means DefaultBuckets).
	Buckets []float64
	// Store, when set, is read at every scrape for the per-rule tracked
	// keys, bucket and eviction metrics (policy.MemoryStore implements it).
	Store policy.Inspector
	// StoreErrors, when set, is read at every scrape as the store error
	// counter; for a Redis store pass
	//
	//	func() uint64 { return s.Snapshot().Errors }
	//
	// It must be monotonic and safe for concurrent use.
	StoreErrors func() uint64
	// Health, when set, is read at every scrape for the store health
	// metrics (breaker, call latency, errors by kind, degraded decisions,
	// leases lost and registered again, instances): pass a
	// redisstore.Store's Health method. It must be cheap and safe for
	// concurrent use.
	Health func() policy.StoreHealth
}

// Observer exports a Limiter's decisions as Prometheus metrics. It
// implements policy.Observer (pass it as ws.Options.Observer or
// policy.Options.Observer) and prometheus.Collector (register it once).
// It is safe for concurrent use.
type Observer struct {
	decisions   *prometheus.CounterVec
	byResult    [4]prometheus.Counter // admitted, rejected, exempt, would reject
	rejections  *prometheus.CounterVec
	wouldReject *prometheus.CounterVec
	admissions  *prometheus.CounterVec
	live        *prometheus.GaugeVec
	invalid     prometheus.Counter
	latency     prometheus.Histogram

	store       policy.Inspector
	storeErrors func() uint64
	keysDesc    *prometheus.Desc
	bucketsDesc *prometheus.Desc
	evictDesc   *prometheus.Desc
	errorsDesc  *prometheus.Desc
	health      func() policy.StoreHealth
	hd          healthDescs

	// rules caches each rule's metric children, so that the hot path
	// neither builds label slices nor hashes label values: a copy-on-write
	// map read without a lock, written under mu.
	rules atomic.Pointer[map[string]*ruleMetrics]
	mu    sync.Mutex
}

var (
	_ policy.Observer      = (*Observer)(nil)
	_ prometheus.Collector = (*Observer)(nil)
)

const (
	idxAdmitted = iota
	idxRejected
	idxExempt
	idxWouldReject
)

// numReasons bounds the reason slots of a rule; policy.Reason values at or
// past it are counted as reason none (0).
const numReasons = 8

// ruleMetrics holds one rule's children, each created on first use so that
// a rule exports only the series that happened (a rate-only rule has no
// live_connections series).
type ruleMetrics struct {
	name        string
	admitted    lazy[prometheus.Counter]
	live        lazy[prometheus.Gauge]
	rejected    [numReasons]lazy[prometheus.Counter]
	wouldReject [numReasons]lazy[prometheus.Counter]
}

// lazy is a metric child created at most once, read without a lock.
type lazy[T any] struct {
	p atomic.Pointer[T]
}

// get returns the child, creating it with mk the first time. Concurrent
// first calls may both call mk: WithLabelValues returns the same child.
func (l *lazy[T]) get(mk func() T) T {
	if p := l.p.Load(); p != nil {
		return *p
	}
	v := mk()
	l.p.Store(&v)
	return v
}

// New returns an Observer with its metrics; register it with
// reg.MustRegister(obs).
func New(opts Options) *Observer {
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	buckets := opts.Buckets
	if buckets == nil {
		buckets = DefaultBuckets
	}
	cl := opts.ConstLabels
	o := &Observer{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "decisions_total", ConstLabels: cl,
			Help: "Handshake decisions by result: admitted, rejected, exempt, dry_run_would_reject.",
		}, []string{"result"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "rejections_total", ConstLabels: cl,
			Help: "Handshakes refused, by refusing rule and reason (rule is empty for store errors).",
		}, []string{"rule", "reason"}),
		wouldReject: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "dry_run_would_reject_total", ConstLabels: cl,
			Help: "Handshakes a dry-run policy admitted but enforcement would have refused, by rule and reason.",
		}, []string{"rule", "reason"}),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "admissions_total", ConstLabels: cl,
			Help: "Admitted handshakes by each rule that applied to them.",
		}, []string{"rule"}),
		live: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "live_connections", ConstLabels: cl,
			Help: "Connection slots held by admitted connections of this process, by capped rule.",
		}, []string{"rule"}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "invalid_tokens_total", ConstLabels: cl,
			Help: "Handshakes carrying a token that failed verification (treated as no token).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "decision_seconds", ConstLabels: cl, Buckets: buckets,
			Help: "Time to evaluate a handshake's policy, store round trip included.",
		}),
		store:       opts.Store,
		storeErrors: opts.StoreErrors,
		keysDesc: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "tracked_keys"),
			"Keys holding at least one connection slot in the store, by rule.", []string{"rule"}, cl),
		bucketsDesc: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "buckets"),
			"Token buckets tracked by the store, by rule.", []string{"rule"}, cl),
		evictDesc: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "bucket_evictions_total"),
			"Token buckets dropped before they had refilled, by rule (rising: max_keys too small).", []string{"rule"}, cl),
		errorsDesc: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "store_errors_total"),
			"Failed store calls (errors and timeouts).", nil, cl),
		health: opts.Health,
		hd:     newHealthDescs(ns, cl),
	}
	o.byResult[idxAdmitted] = o.decisions.WithLabelValues(ResultAdmitted)
	o.byResult[idxRejected] = o.decisions.WithLabelValues(ResultRejected)
	o.byResult[idxExempt] = o.decisions.WithLabelValues(ResultExempt)
	o.byResult[idxWouldReject] = o.decisions.WithLabelValues(ResultWouldReject)
	m := map[string]*ruleMetrics{}
	o.rules.Store(&m)
	return o
}

// rule returns the cached metrics of the named rule.
func (o *Observer) rule(name string) *ruleMetrics {
	if r, ok := (*o.rules.Load())[name]; ok {
		return r
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	old := *o.rules.Load()
	if r, ok := old[name]; ok {
		return r
	}
	next := make(map[string]*ruleMetrics, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	r := &ruleMetrics{name: name}
	next[name] = r
	o.rules.Store(&next)
	return r
}

func (o *Observer) admittedCounter(r *ruleMetrics) prometheus.Counter {
	return r.admitted.get(func() prometheus.Counter { return o.admissions.WithLabelValues(r.name) })
}

func (o *Observer) liveGauge(r *ruleMetrics) prometheus.Gauge {
	return r.live.get(func() prometheus.Gauge { return o.live.WithLabelValues(r.name) })
}

func (o *Observer) refusal(vec *prometheus.CounterVec, slots *[numReasons]lazy[prometheus.Counter], rule string, reason policy.Reason) prometheus.Counter {
	if int(reason) >= numReasons {
		reason = 0
	}
	return slots[reason].get(func() prometheus.Counter { return vec.WithLabelValues(rule, reason.String()) })
}

// Decided counts a decision, its latency, and for an admission each rule
// that applied to it and the connection slots it took. It never reads
// the decision's keys.
func (o *Observer) Decided(d *policy.Decision, took time.Duration) {
	o.latency.Observe(took.Seconds())
	if d.InvalidToken {
		o.invalid.Inc()
	}
	switch {
	case !d.Allowed:
		o.byResult[idxRejected].Inc()
		r := o.rule(d.Rule)
		o.refusal(o.rejections, &r.rejected, d.Rule, d.Reason).Inc()
		return
	case d.Exempt:
		o.byResult[idxExempt].Inc()
		return
	case d.WouldReject:
		o.byResult[idxWouldReject].Inc()
		r := o.rule(d.Rule)
		o.refusal(o.wouldReject, &r.wouldReject, d.Rule, d.Reason).Inc()
	default:
		o.byResult[idxAdmitted].Inc()
	}
	// A dry-run decision may still hold slots (of the rules that admitted
	// it): count them like any admission, so that Released balances.
	claims := d.Claims()
	for i := range claims {
		r := o.rule(claims[i].Rule)
		o.admittedCounter(r).Inc()
		if claims[i].Conns > 0 {
			o.liveGauge(r).Inc()
		}
	}
}

// Released gives back the connection slots counted by Decided; the Limiter
// calls it exactly once per admitted decision that held slots.
func (o *Observer) Released(d *policy.Decision) {
	claims := d.Claims()
	for i := range claims {
		if claims[i].Conns > 0 {
			o.liveGauge(o.rule(claims[i].Rule)).Dec()
		}
	}
}

// Describe sends the descriptors of every metric the Observer may export.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	o.decisions.Describe(ch)
	o.rejections.Describe(ch)
	o.wouldReject.Describe(ch)
	o.admissions.Describe(ch)
	o.live.Describe(ch)
	o.invalid.Describe(ch)
	o.latency.Describe(ch)
	if o.store != nil {
		ch <- o.keysDesc
		ch <- o.bucketsDesc
		ch <- o.evictDesc
	}
	if o.storeErrors != nil {
		ch <- o.errorsDesc
	}
	if o.health != nil {
		o.hd.describe(ch)
	}
}

// Collect sends the current values; the store's gauges and counters are
// read now, one Stats call per rule the store knows.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	o.decisions.Collect(ch)
	o.rejections.Collect(ch)
	o.wouldReject.Collect(ch)
	o.admissions.Collect(ch)
	o.live.Collect(ch)
	o.invalid.Collect(ch)
	o.latency.Collect(ch)
	if o.store != nil {
		for _, rule := range o.store.Rules() {
			st := o.store.Stats(rule)
			ch <- prometheus.MustNewConstMetric(o.keysDesc, prometheus.GaugeValue, float64(st.Keys), rule)
			ch <- prometheus.MustNewConstMetric(o.bucketsDesc, prometheus.GaugeValue, float64(st.Buckets), rule)
			ch <- prometheus.MustNewConstMetric(o.evictDesc, prometheus.CounterValue, float64(st.Evictions), rule)
		}
	}
	if o.storeErrors != nil {
		ch <- prometheus.MustNewConstMetric(o.errorsDesc, prometheus.CounterValue, float64(o.storeErrors()))
	}
	if o.health != nil {
		o.hd.collect(ch, o.health())
	}
}
