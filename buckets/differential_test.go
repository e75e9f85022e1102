package buckets

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// This file checks that a bucket's arithmetic follows golang.org/x/time/rate:
// random sequences of Reserves and Cancels run against a Table and against
// a rate.Limiter driven the way the previous implementation of this package
// drove one (ReserveN, DelayFrom, CancelAt), and every result and token
// count must agree, except for the Cancels where the table deliberately
// differs; those are checked against a counterfactual instead.

// diffStats counts what a differential run compared.
type diffStats struct {
	reserves, granted, refused int
	exactRetry, exactTokens    int // compared results equal to the bit
	comparedTokens             int
	cancelLate                 int    // after the reservation's time: no-op in both
	cancelSame                 int    // same semantics: compared with x/time/rate
	cancelDiff                 [4]int // by reason (a Cancel may have several)
	cancelDiffAll              int
	maxTokenDiff               float64
	maxRetryDiff               time.Duration
}

// Why a Cancel is expected to differ from x/time/rate's CancelAt.
const (
	diffLater   = iota // the bucket was used at a later time since the reservation
	diffRefused        // a reservation was refused since (x/time/rate restores less)
	diffParams         // the limit or burst changed since (the table restores nothing)
	diffStale          // the reference limiter was rebuilt since (see resync)
)

var diffNames = [...]string{"later use", "refusal since", "parameters changed", "reference rebuilt"}

// TestDifferential compares the table's bucket with x/time/rate over
// random sequences: reserves at increasing, equal and decreasing times
// (the table's shard clock takes an earlier time as the latest seen, so
// the reference is driven at that time), random changes of limit and burst,
// another key moving the shard clock, and cancels at, before and after the
// reservation's time.
//
// Results (OK, RetryAfter) and tokens must agree within 1e-9 tokens and
// 1 ns; in practice they agree to the bit except where x/time/rate's
// refused reservation, taken and cancelled, leaves (τ-1)+1 tokens where
// the table leaves τ. Cancels agree where the semantics are the same: a
// Cancel after the reservation's time does nothing in both, and one with
// nothing in between but reservations granted at the same instant restores
// a whole token in both. The intended differences:
//
//   - a refusal since the reservation: x/time/rate counts the refused
//     reservation's would-be time in its lastEvent and restores less than
//     a token; the table restores the whole token, which is exact;
//   - a use of the bucket at a later time L since: CancelAt at the
//     reservation's time moves x/time/rate's last update back to it and
//     counts the refill from there to L twice; the table restores the
//     token minus that refill at L;
//   - a change of limit or burst since: the table restores nothing.
//
// For these, the table's tokens must lie between what they were before the
// Cancel and that plus one token, and never above the counterfactual: a
// limiter replaying every granted reservation except the cancelled ones
// (as if those had never been made, all other decisions standing). After
// such a Cancel the reference is rebuilt from the table's state.
func TestDifferential(t *testing.T) {
	runs, steps := 20, 5000
	if testing.Short() {
		runs, steps = 4, 1000
	}
	var total diffStats
	for seed := range uint64(runs) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			st := runDifferential(t, seed, steps)
			total.reserves += st.reserves
			total.granted += st.granted
			total.refused += st.refused
			total.exactRetry += st.exactRetry
			total.exactTokens += st.exactTokens
			total.comparedTokens += st.comparedTokens
			total.cancelDiffAll += st.cancelDiffAll
			total.cancelLate += st.cancelLate
			total.cancelSame += st.cancelSame
			for i := range st.cancelDiff {
				total.cancelDiff[i] += st.cancelDiff[i]
			}
			total.maxTokenDiff = max(total.maxTokenDiff, st.maxTokenDiff)
			total.maxRetryDiff = max(total.maxRetryDiff, st.maxRetryDiff)
		})
	}
	t.Logf("%d reserves (%d granted, %d refused): %d of %d RetryAfters and %d of %d token counts equal to the bit; largest differences %v, %.3g tokens",
		total.reserves, total.granted, total.refused, total.exactRetry, total.refused, total.exactTokens, total.comparedTokens, total.maxRetryDiff, total.maxTokenDiff)
	t.Logf("cancels: %d after the reservation's time (no-op in both), %d with the same semantics (compared), %d differing by design (checked against the counterfactual)",
		total.cancelLate, total.cancelSame, total.cancelDiffAll)
	for i, n := range total.cancelDiff {
		t.Logf("  of which %s: %d", diffNames[i], n)
	}
}

// outstanding is a granted reservation, in the table and in the reference.
type outstanding struct {
	res   Reservation
	ref   *rate.Reservation
	id    int   // its grant in the counterfactual's log
	at    int64 // the time it was taken at, after t0
	diffs [4]bool
}

// event is one entry of the counterfactual's log.
type event struct {
	at    int64
	grant int // the grant's id, or -1 for new parameters
	limit rate.Limit
	burst int
}

func runDifferential(t *testing.T, seed uint64, steps int) diffStats {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	limits := []rate.Limit{0, 0.5, 1, 3, 10, 100, rate.Every(time.Minute), rate.Every(7 * time.Millisecond), rate.Inf}
	bursts := []int{0, 1, 2, 3, 5, 10}
	pick := func() (rate.Limit, int) {
		l := limits[rng.IntN(len(limits)-1)] // Inf rarely
		if rng.IntN(20) == 0 {
			l = rate.Inf
		}
		b := bursts[1+rng.IntN(len(bursts)-1)] // 0 rarely
		if rng.IntN(20) == 0 {
			b = 0
		}
		return l, b
	}

	tb := New[string](Options{MaxKeys: minShardKeys}) // one shard
	if len(tb.set.Load().shards) != 1 {
		t.Fatal("want a one-shard table")
	}
	const k = "k"
	var (
		st         diffStats
		now        int64 // the caller's time, after t0
		clock      = int64(math.MinInt64)
		last       int64 // the bucket's latest update (reserve or new parameters)
		limit, bur = pick()
		ref        *rate.Limiter
		outs       []*outstanding
		log        []event
		cancelled  = map[int]bool{}
		grants     int
	)
	tm := func(d int64) time.Time { return t0.Add(time.Duration(d)) }
	counterfactual := func(at int64) float64 {
		lim := rate.NewLimiter(log[0].limit, log[0].burst)
		for _, e := range log {
			switch {
			case e.grant < 0:
				if lim.Limit() != e.limit {
					lim.SetLimitAt(tm(e.at), e.limit)
				}
				if lim.Burst() != e.burst {
					lim.SetBurstAt(tm(e.at), e.burst)
				}
			case !cancelled[e.grant]:
				lim.ReserveN(tm(e.at), 1) // granted, whatever its delay now
			}
		}
		return lim.TokensAt(tm(at))
	}
	compareTokens := func(step int, what string, at int64) {
		t.Helper()
		got, ok := tb.Tokens(k, tm(at))
		if !ok {
			t.Fatalf("step %d (%s): no bucket", step, what)
		}
		want := ref.TokensAt(tm(at))
		st.comparedTokens++
		if got == want {
			st.exactTokens++
		}
		d := math.Abs(got - want)
		st.maxTokenDiff = max(st.maxTokenDiff, d)
		if d > 1e-9 {
			t.Fatalf("step %d (%s) at t0+%v, limit %v burst %d: %v tokens, x/time/rate %v", step, what, time.Duration(at), limit, bur, got, want)
		}
	}

	for step := range steps {
		// Move time: mostly forward or not at all, sometimes back, and
		// sometimes let another key move the shard clock past it.
		switch x := rng.IntN(100); {
		case x < 25:
		case x < 55:
			now += rng.Int64N(int64(50 * time.Millisecond))
		case x < 80:
			now += rng.Int64N(int64(3 * time.Second))
		case x < 90:
			now -= rng.Int64N(int64(time.Second))
		default:
			other := now + rng.Int64N(int64(500*time.Millisecond))
			tb.Reserve("other", tm(other), 1, 1)
			clock = max(clock, other)
		}
		if rng.IntN(50) == 0 {
			limit, bur = pick()
		}

		action := rng.IntN(100)
		if action < 60 || len(outs) == 0 {
			// Reserve.
			at := max(now, clock)
			clock = at
			if _, ok := tb.Tokens(k, tm(at)); !ok {
				ref, log, outs = nil, nil, nil // a new bucket starts full
			}
			if ref == nil {
				ref = rate.NewLimiter(limit, bur)
				log = append(log, event{at: at, grant: -1, limit: limit, burst: bur})
			} else if ref.Limit() != limit || ref.Burst() != bur {
				last = at
				if ref.Limit() != limit {
					ref.SetLimitAt(tm(at), limit)
				}
				if ref.Burst() != bur {
					ref.SetBurstAt(tm(at), bur)
				}
				log = append(log, event{at: at, grant: -1, limit: limit, burst: bur})
				for _, o := range outs {
					o.diffs[diffParams] = true
				}
			}
			var want Result
			rr := ref.ReserveN(tm(at), 1)
			if !rr.OK() {
				want.RetryAfter = rate.InfDuration
			} else if d := rr.DelayFrom(tm(at)); d > 0 {
				rr.CancelAt(tm(at))
				want.RetryAfter = d
				if d != rate.InfDuration {
					want.RetryAfter += time.Duration(at - now)
				}
			} else {
				want.OK = true
			}

			res, got := tb.Reserve(k, tm(now), limit, bur)
			st.reserves++
			if got.OK != want.OK || got.Full {
				t.Fatalf("step %d: Reserve at t0+%v (taken as t0+%v), limit %v burst %d: got %+v, x/time/rate %+v",
					step, time.Duration(now), time.Duration(at), limit, bur, got, want)
			}
			if want.OK {
				st.granted++
			} else {
				st.refused++
				d := got.RetryAfter - want.RetryAfter
				if d == 0 {
					st.exactRetry++
				}
				d = max(d, -d)
				st.maxRetryDiff = max(st.maxRetryDiff, d)
				if d > time.Nanosecond || (got.RetryAfter == rate.InfDuration) != (want.RetryAfter == rate.InfDuration) {
					t.Fatalf("step %d: RetryAfter %v, x/time/rate %v", step, got.RetryAfter, want.RetryAfter)
				}
			}
			if _, ok := tb.Tokens(k, tm(at)); !ok {
				if want.OK || bur >= 1 {
					t.Fatalf("step %d: no bucket after %+v", step, got)
				}
				ref, log = nil, nil // refused new key: no bucket, no state
				continue
			}
			if limit != rate.Inf && bur >= 1 {
				last = at // as x/time/rate's, with every ReserveN that is OK
			}
			for _, o := range outs {
				if at > o.at {
					o.diffs[diffLater] = true
				}
				if !want.OK {
					o.diffs[diffRefused] = true
				}
			}
			if want.OK && limit != rate.Inf {
				if res == (Reservation{}) {
					t.Fatalf("step %d: granted with an empty Reservation", step)
				}
				log = append(log, event{at: at, grant: grants})
				outs = append(outs, &outstanding{res: res, ref: rr, id: grants, at: at})
				grants++
			}
			compareTokens(step, "reserve", at)
			continue
		}

		// Cancel an outstanding reservation: mostly the latest at the
		// caller's time (a handshake that another rule refused), else any
		// at its time, before it, or at the caller's current time (which
		// may be after it).
		j := len(outs) - 1
		c := now
		if action < 75 {
			c = outs[j].at
		} else if action >= 85 {
			j = rng.IntN(len(outs))
			switch c = outs[j].at; rng.IntN(10) {
			case 0, 1:
				c -= rng.Int64N(int64(time.Second))
			case 2, 3, 4:
				c = now
			}
		}
		o := outs[j]
		outs = slices.Delete(outs, j, j+1)
		before, _ := tb.Tokens(k, tm(clock))
		o.res.Cancel(tm(c))
		after, _ := tb.Tokens(k, tm(clock))
		if c > o.at {
			st.cancelLate++
			if !o.diffs[diffStale] {
				o.ref.CancelAt(tm(c)) // a no-op too: the token counts as used
			}
			if after != before {
				t.Fatalf("step %d: Cancel after the reservation's time changed the tokens from %v to %v", step, before, after)
			}
			compareTokens(step, "late cancel", clock)
			continue
		}
		cancelled[o.id] = true
		if o.diffs == [4]bool{} {
			st.cancelSame++
			o.ref.CancelAt(tm(o.at)) // what the previous Cancel did
			compareTokens(step, "cancel", clock)
			continue
		}
		st.cancelDiffAll++
		for i, d := range o.diffs {
			if d {
				st.cancelDiff[i]++
			}
		}
		cf := counterfactual(clock)
		if after < before || after > before+1+1e-12 || after > cf+1e-9 {
			t.Fatalf("step %d: Cancel (%v) moved the tokens from %v to %v; counterfactual %v", step, o.diffs, before, after, cf)
		}
		if o.diffs == [4]bool{diffRefused: true} {
			o.ref.CancelAt(tm(o.at))
			if x := ref.TokensAt(tm(clock)); after < x-1e-9 {
				t.Fatalf("step %d: Cancel after a refusal restored less than x/time/rate: %v < %v", step, after, x)
			}
		}
		ref = resync(t, tb, k, ref.Limit(), ref.Burst(), last)
		for _, o := range outs {
			o.diffs[diffStale] = true
		}
		compareTokens(step, "resync", clock)
	}
	return st
}

// resync returns a rate.Limiter with the parameters, tokens and last update
// of k's bucket: tokens τ at time last are made by emptying a limiter of
// rate τ a second before and switching to limit at last, which x/time/rate
// computes as 0 + 1.0×τ, exactly τ.
func resync(t *testing.T, tb *Table[string], k string, limit rate.Limit, burst int, last int64) *rate.Limiter {
	t.Helper()
	at := t0.Add(time.Duration(last))
	tokens, ok := tb.Tokens(k, at)
	if !ok {
		t.Fatal("resync: no bucket")
	}
	if burst < 1 {
		return rate.NewLimiter(limit, burst) // no tokens, whatever the table stores
	}
	// A deficit below a nanosecond's refill (see bucket.take) becomes zero.
	lim := rate.NewLimiter(rate.Limit(max(tokens, 0)), burst)
	lim.ReserveN(at.Add(-time.Second), burst)
	lim.SetLimitAt(at, limit)
	if got := lim.TokensAt(at); got != tokens && tokens >= 0 {
		t.Fatalf("resync: %v tokens, want %v", got, tokens)
	}
	return lim
}
