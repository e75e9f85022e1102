package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// gateHook holds script calls until the gate opens (or their context
// ends, unless stuck is set), and can make them fail. calls counts the
// script calls (round trips other than a new connection's HELLO).
type gateHook struct {
	gate  chan struct{}
	fail  atomic.Bool
	stuck bool
	calls atomic.Int64
}

var errInjected = errors.New("injected failure")

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.calls.Add(1)
			var done <-chan struct{}
			if !h.stuck {
				done = ctx.Done()
			}
			select {
			case <-h.gate:
			case <-done:
				cmd.SetErr(ctx.Err())
				return ctx.Err()
			}
			if h.fail.Load() {
				cmd.SetErr(errInjected)
				return errInjected
			}
		}
		return next(ctx, cmd)
	}
}
func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// queued returns the number of admissions waiting for a batch and the
// calls in flight.
func queued(s *Store) (waiting, inflight int) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for _, r := range s.queue {
		if r.state == reqQueued {
			waiting++
		}
	}
	return waiting, s.inflight
}

// waitQueued waits until n admissions wait behind maxInflight calls.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w, in := queued(s)
		if w == n && in == maxInflight {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d admissions waiting, %d calls in flight; want %d and %d", w, in, n, maxInflight)
		}
		time.Sleep(time.Millisecond)
	}
}

// admitMany starts n admissions of claims at once; wait waits for them
// and returns their results and how long each took.
func admitMany(s *Store, n int, claims []policy.Claim) (wait func() ([]policy.Verdict, []error, []time.Duration)) {
	vs := make([]policy.Verdict, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			t0 := time.Now()
			_, vs[i], errs[i] = s.Admit(context.Background(), time.Now(), claims)
			took[i] = time.Since(t0)
		})
	}
	return func() ([]policy.Verdict, []error, []time.Duration) {
		wg.Wait()
		return vs, errs, took
	}
}

// TestBatchedAdmissionsExact: admissions that wait behind calls in flight
// go out together in one script call, and each is still decided on its
// own: the cap admits exactly its number, and the refused admissions spend
// no token in the bucket checked before the cap.
func TestBatchedAdmissionsExact(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	gate := &gateHook{gate: make(chan struct{})}
	c.AddHook(gate)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), Timeout: 10 * time.Second})
	claims := []policy.Claim{bucket("per-ip", "10.0.0.9", 1e-9, 25), conns("per-user", "ivan", 20)}
	const n = maxInflight + maxBatch

	wait := admitMany(s, n, claims)
	waitQueued(t, s, maxBatch)
	close(gate.gate)
	vs, errs, _ := wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	admitted := 0
	for _, v := range vs {
		switch {
		case v.OK:
			admitted++
		case v.Index != 1 || v.Reason != policy.ReasonConnections:
			t.Fatalf("refusal %+v, want the cap (claim 1)", v)
		}
	}
	if admitted != 20 {
		t.Fatalf("admitted %d, want the cap 20", admitted)
	}
	if got := gate.calls.Load(); got != 3 {
		t.Fatalf("%d round trips for %d admissions, want 3 (%d alone, then one batch)", got, n, maxInflight)
	}
	_, bk := s.keys(&claims[0])
	if tok := bucketTokens(t, c, bk); tok < 5 || tok > 5.01 {
		t.Fatalf("bucket holds %.4f tokens, want 5 (refused admissions spend none)", tok)
	}
	ck, _ := s.keys(&claims[1])
	if got := zcard(t, c, ck); got != 20 {
		t.Fatalf("lease set holds %d, want 20", got)
	}
	if st := s.Stats(); st.Live != 20 || st.Errors != 0 || st.Degraded != 0 {
		t.Fatalf("stats = %+v, want 20 live, no errors", st)
	}
	if w, in := queued(s); w != 0 || in != 0 {
		t.Fatalf("after the batch: %d waiting, %d in flight; want none", w, in)
	}
}

// TestBatchFailure: when a batched call fails, every admission in it gets
// on_error, and their members are taken back in case the script ran.
func TestBatchFailure(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	gate := &gateHook{gate: make(chan struct{})}
	c.AddHook(gate)
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), Timeout: 10 * time.Second,
		BreakerCooldown: time.Millisecond})
	claims := []policy.Claim{conns("per-user", "judy", 100)}
	const n = maxInflight + 5

	wait := admitMany(s, n, claims)
	waitQueued(t, s, n-maxInflight)
	gate.fail.Store(true)
	close(gate.gate)
	vs, errs, _ := wait()
	for i, v := range vs {
		if errs[i] != nil || v.OK || v.Reason != policy.ReasonStoreError {
			t.Fatalf("admission %d: %+v, %v; want on_error deny", i, v, errs[i])
		}
	}
	st := s.Stats()
	if st.Degraded != n || st.Errors != n || st.Pending != n || st.Live != 0 {
		t.Fatalf("stats = %+v, want %d degraded, failed and pending, none live", st, n)
	}
	gate.fail.Store(false)
	time.Sleep(2 * time.Millisecond) // the breaker's cooldown
	s.sync(context.Background(), false)
	if st := s.Stats(); st.Pending != 0 {
		t.Fatalf("stats = %+v, want nothing pending once Redis answers", st)
	}
}

// TestBatchWaitBounded: an admission waiting for a batch gives up after
// Options.Timeout like one in a call of its own, and one whose caller gave
// up is never sent.
func TestBatchWaitBounded(t *testing.T) {
	addr := sharedAddr(t)
	c, _ := newClient(t, addr)
	// The calls in flight hang whatever their deadline (a stuck client),
	// so that only the waiting admissions can run out of time first.
	gate := &gateHook{gate: make(chan struct{}), stuck: true}
	c.AddHook(gate)
	const timeout = 100 * time.Millisecond
	s := newStore(t, c, Options{OnError: FailDeny, Prefix: uniquePrefix(t), Timeout: timeout, BreakerFailures: 1000})
	claims := []policy.Claim{conns("per-user", "kim", 100)}
	const n = maxInflight + 6

	t0 := time.Now()
	wait := admitMany(s, n, claims)
	waitQueued(t, s, n-maxInflight)
	for s.Stats().Degraded < n-maxInflight {
		if time.Since(t0) > timeout+time.Second {
			t.Fatalf("waiting admissions did not give up: %+v", s.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if took := time.Since(t0); took > timeout+300*time.Millisecond {
		t.Fatalf("waiting admissions gave up after %v, want about the timeout %v", took, timeout)
	}
	close(gate.gate) // the hung calls go on, past their deadline
	vs, errs, _ := wait()
	for i := range n {
		if errs[i] != nil || vs[i].OK || vs[i].Reason != policy.ReasonStoreError {
			t.Fatalf("admission %d: %+v, %v; want on_error deny", i, vs[i], errs[i])
		}
	}
	if w, in := queued(s); w != 0 || in != 0 {
		t.Fatalf("%d waiting, %d in flight; want none", w, in)
	}
	if got := gate.calls.Load(); got != maxInflight {
		t.Fatalf("%d calls, want %d: admissions whose callers gave up were sent", got, maxInflight)
	}
	ck, _ := s.keys(&claims[0])
	if got := zcard(t, c, ck); got != 0 {
		t.Fatalf("lease set holds %d after every caller gave up, want 0", got)
	}
}
