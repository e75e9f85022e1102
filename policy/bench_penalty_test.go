package policy

import (
	"context"
	"testing"
)

// benchPenalties is bench3 with two penalties that no admission offends:
// the cost of having penalties configured (a ban lookup per penalty, with
// no ban held) and of following each admitted connection for messages (an
// Offender per admission). Not short_lived: the benchmark's clock is
// frozen, so every connection would be short-lived and banned.
const benchPenalties = bench3 + `penalties:
  - {name: refused-ip, key: ip, offences: {refused: [per-ip]}}
  - {name: msgs-subnet, key: subnet, offences: {messages: true}}
`

// BenchmarkAdmitReleasePenalties measures a 3-rule admission and its
// release with and without penalties configured, serially, in one run.
func BenchmarkAdmitReleasePenalties(b *testing.B) {
	ctx := context.Background()
	pool := newAddrPool(nil)
	for _, bc := range []struct{ name, doc string }{{"none", bench3}, {"two", benchPenalties}} {
		b.Run(bc.name, func(b *testing.B) {
			l := benchLimiter(b, bc.doc)
			d := pool.drawer(1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				dec := l.Admit(ctx, d.next())
				if !dec.Allowed {
					b.Fatalf("refused: %s %s", dec.Rule, dec.Reason)
				}
				dec.Release()
			}
		})
	}
}
