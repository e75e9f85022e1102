package messages

import (
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestBucketAgainstRate drives a bucket and an x/time/rate Limiter with
// the same random charges at the same times: a close limit (no debt) must
// allow exactly what AllowN allows, and a throttle must wait what
// ReserveN's delay says (to within 2ns: the bucket rounds up by 1ns, and
// the two round their float arithmetic differently).
func TestBucketAgainstRate(t *testing.T) {
	base := time.Unix(1_000_000, 0)
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0))
		perSec := float64(1 + rng.IntN(1000))
		burst := 1 + rng.IntN(50)
		debt := seed%2 == 0
		lim := rate.NewLimiter(rate.Limit(perSec), burst)
		var b bucket
		now := int64(0)
		for i := range 2000 {
			now += int64(rng.ExpFloat64() * float64(time.Second) / perSec)
			n := 1 + rng.IntN(burst)
			at := base.Add(time.Duration(now))
			wait := b.take(now, float64(n), perSec/1e9, float64(burst), debt)
			if !debt {
				if got, want := wait == 0, lim.AllowN(at, n); got != want {
					t.Fatalf("seed %d step %d: bucket allows %v, rate.AllowN %v (n %d, %v/s burst %d)", seed, i, got, want, n, perSec, burst)
				}
				continue
			}
			want := lim.ReserveN(at, n).DelayFrom(at)
			if d := time.Duration(wait) - want; d < -2 || d > 2 {
				t.Fatalf("seed %d step %d: bucket waits %v, rate.ReserveN %v", seed, i, time.Duration(wait), want)
			}
		}
	}
}
