package prom

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy/penalty"
)

// TestPenaltyCollector exports an engine's counters by penalty, never by
// key: two offences that earn a ban and one ban by hand.
func TestPenaltyCollector(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	e := penalty.New(penalty.Options{Now: func() time.Time { return now }})
	p := penalty.Config{Name: "loop", Offences: penalty.Offences{ShortLived: time.Second}, Threshold: 2}.Params(false, func(f, m string) { t.Fatal(f, m) })
	tb := e.Configure([]penalty.Params{p})[0]
	k := keys.IP(netip.MustParseAddr("192.0.2.7"))
	tb.Offend(k, penalty.KindShortLived, now)
	tb.Offend(k, penalty.KindShortLived, now)
	if err := e.Ban(context.Background(), "loop", keys.IP(netip.MustParseAddr("192.0.2.8")), time.Minute); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewPenaltyCollector(e, Options{}))
	want := `
# HELP wslimit_penalty_bans_active Bans in force now (dry-run ones included).
# TYPE wslimit_penalty_bans_active gauge
wslimit_penalty_bans_active{penalty="loop"} 2
# HELP wslimit_penalty_bans_total Bans issued, set by hand or received from other instances.
# TYPE wslimit_penalty_bans_total counter
wslimit_penalty_bans_total{penalty="loop"} 2
# HELP wslimit_penalty_offences_total Offences counted, by penalty and kind.
# TYPE wslimit_penalty_offences_total counter
wslimit_penalty_offences_total{kind="invalid_identity",penalty="loop"} 0
wslimit_penalty_offences_total{kind="message",penalty="loop"} 0
wslimit_penalty_offences_total{kind="refused",penalty="loop"} 0
wslimit_penalty_offences_total{kind="short_lived",penalty="loop"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wslimit_penalty_bans_active", "wslimit_penalty_bans_total", "wslimit_penalty_offences_total"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if s := mf.String(); strings.Contains(s, "192.0.2") {
			t.Fatalf("a metric carries a key: %s", s)
		}
	}
}
