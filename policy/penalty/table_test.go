package penalty

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_000_000, 0)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func params(mut func(*Params)) Params {
	p := Config{Name: "p", Offences: Offences{Messages: true}}.Params(false, func(f, m string) { panic(f + ": " + m) })
	p.Threshold, p.Window, p.Ban, p.MaxBan, p.Forgive = 3, time.Minute, 10*time.Second, 35*time.Second, time.Hour
	if mut != nil {
		mut(&p)
	}
	return p
}

func ip(s string) keys.Key { return keys.IP(netip.MustParseAddr(s)) }

func offend(t *Table, k keys.Key, n int, c *clock) {
	for range n {
		t.Offend(k, KindRefused, c.Now())
	}
}

func TestBanAfterThresholdEscalatesAndCaps(t *testing.T) {
	c := newClock()
	e := New(Options{Now: c.Now})
	tb := e.Configure([]Params{params(nil)})[0]
	k := ip("192.0.2.7")
	offend(tb, k, 2, c)
	if _, ok := tb.Banned(k, c.Now()); ok {
		t.Fatal("banned after 2 offences, threshold 3")
	}
	// Ban, 2×ban, 4×ban capped at max_ban 35s, 35s.
	for i, want := range []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second} {
		offend(tb, k, 3, c)
		left, ok := tb.Banned(k, c.Now())
		if !ok || left != want {
			t.Fatalf("ban %d: got %v %v, want %v", i+1, left, ok, want)
		}
		c.Add(want - time.Nanosecond)
		if _, ok := tb.Banned(k, c.Now()); !ok {
			t.Fatalf("ban %d ended before %v", i+1, want)
		}
		c.Add(time.Nanosecond)
		if _, ok := tb.Banned(k, c.Now()); ok {
			t.Fatalf("ban %d still in force after %v", i+1, want)
		}
	}
}

func TestOffencesOutsideWindowDoNotCount(t *testing.T) {
	c := newClock()
	tb := New(Options{Now: c.Now}).Configure([]Params{params(nil)})[0]
	k := ip("192.0.2.7")
	for range 10 {
		offend(tb, k, 1, c)
		c.Add(31 * time.Second) // two offences per minute at most: under threshold 3
	}
	if _, ok := tb.Banned(k, c.Now()); ok {
		t.Fatal("banned by offences spread wider than the window")
	}
	offend(tb, k, 2, c) // with the one 31s ago: 3 within a minute
	if _, ok := tb.Banned(k, c.Now()); !ok {
		t.Fatal("not banned by 3 offences within the window")
	}
}

func TestForgivenAfterQuietPeriod(t *testing.T) {
	c := newClock()
	tb := New(Options{Now: c.Now}).Configure([]Params{params(nil)})[0]
	k := ip("192.0.2.7")
	offend(tb, k, 3, c)
	c.Add(10 * time.Second)
	c.Add(time.Hour) // quiet for forgive after the ban ended (plus the ban's own end)
	c.Add(time.Second)
	offend(tb, k, 3, c)
	if left, _ := tb.Banned(k, c.Now()); left != 10*time.Second {
		t.Fatalf("after the quiet period got a %v ban, want the first 10s again", left)
	}
	c.Add(10*time.Second + 59*time.Minute) // not quiet long enough
	offend(tb, k, 3, c)
	if left, _ := tb.Banned(k, c.Now()); left != 20*time.Second {
		t.Fatalf("before the quiet period ended got %v, want 20s", left)
	}
}

func TestThresholdFactorTightens(t *testing.T) {
	c := newClock()
	e := New(Options{Now: c.Now})
	tb := e.Configure([]Params{params(func(p *Params) { p.Threshold = 10 })})[0]
	e.SetThresholdFactor(0.2)
	k := ip("192.0.2.7")
	offend(tb, k, 2, c)
	if _, ok := tb.Banned(k, c.Now()); !ok {
		t.Fatal("factor 0.2 of threshold 10: want a ban at 2 offences")
	}
	e.SetThresholdFactor(5) // ignored: only tightening
	if got := e.threshold(10); got != 2 {
		t.Fatalf("threshold after an invalid factor: got %d, want 2", got)
	}
}

// TestFloodCannotEvictOrShortenBans fills the ban table and floods it with
// new offenders: every active ban stays, whole, and the excess is dropped.
func TestFloodCannotEvictOrShortenBans(t *testing.T) {
	c := newClock()
	tb := New(Options{Now: c.Now}).Configure([]Params{params(func(p *Params) {
		p.Threshold, p.MaxBans, p.MaxKeys = 1, 8, 16
		p.Ban, p.MaxBan = time.Minute, time.Hour
	})})[0]
	var victims []keys.Key
	for i := range 8 {
		k := ip(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
		victims = append(victims, k)
		offend(tb, k, 1, c)
	}
	c.Add(time.Second)
	for i := range 5000 {
		offend(tb, ip(netip.AddrFrom4([4]byte{203, byte(i >> 8), byte(i), 1}).String()), 1, c)
	}
	for _, k := range victims {
		if left, ok := tb.Banned(k, c.Now()); !ok || left != time.Minute-time.Second {
			t.Fatalf("%v: after the flood got %v %v, want the whole remaining 59s", k, left, ok)
		}
	}
	if got := tb.dropped.Load(); got != 5000 {
		t.Fatalf("dropped bans: got %d, want 5000", got)
	}
	// Once the bans expire the table takes new ones again.
	c.Add(time.Minute)
	offend(tb, ip("203.0.113.9"), 1, c)
	if _, ok := tb.Banned(ip("203.0.113.9"), c.Now()); !ok {
		t.Fatal("no ban issued once the full table's bans had expired")
	}
}

func TestManualBanNeverShortens(t *testing.T) {
	c := newClock()
	e := New(Options{Now: c.Now})
	tb := e.Configure([]Params{params(nil)})[0]
	k := ip("192.0.2.7")
	ctx := context.Background()
	if err := e.Ban(ctx, "p", k, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := e.Ban(ctx, "p", k, time.Second); err != nil {
		t.Fatal(err)
	}
	if left, _ := tb.Banned(k, c.Now()); left != time.Hour {
		t.Fatalf("got %v, want the longer 1h ban kept", left)
	}
	if had, err := e.Unban(ctx, "p", k); !had || err != nil {
		t.Fatalf("Unban: %v %v", had, err)
	}
	if _, ok := tb.Banned(k, c.Now()); ok {
		t.Fatal("still banned after Unban")
	}
	if err := e.Ban(ctx, "nope", k, time.Hour); err == nil {
		t.Fatal("Ban of an unknown penalty: want an error")
	}
}

func TestDryRunLogsAndRefusesNothing(t *testing.T) {
	c := newClock()
	var buf bytes.Buffer
	e := New(Options{Now: c.Now, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	tb := e.Configure([]Params{params(func(p *Params) { p.DryRun = true })})[0]
	k := ip("192.0.2.7")
	offend(tb, k, 3, c)
	if _, ok := tb.Banned(k, c.Now()); ok {
		t.Fatal("a dry-run ban refused")
	}
	if !strings.Contains(buf.String(), "would ban") || !strings.Contains(buf.String(), "192.0.2.7") {
		t.Fatalf("log: %q", buf.String())
	}
	if b := e.Bans(0); len(b) != 1 || !b[0].DryRun {
		t.Fatalf("Bans: %+v, want the would-be ban listed as dry_run", b)
	}
}

func TestBanLogIsRateLimited(t *testing.T) {
	c := newClock()
	var buf bytes.Buffer
	e := New(Options{Now: c.Now, Logger: slog.New(slog.NewTextHandler(&buf, nil)), LogRate: 0.001})
	tb := e.Configure([]Params{params(func(p *Params) { p.Threshold = 1 })})[0]
	for i := range 100 {
		offend(tb, ip(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}).String()), 1, c)
	}
	// Burst 1 at 0.001/s: one line, whatever the clock says (the log
	// limiter runs on wall time, and 100 offences take far less than 1000s).
	if n := strings.Count(buf.String(), "wslimit: ban"); n != 1 {
		t.Fatalf("%d ban lines for 100 bans, want 1", n)
	}
}

func TestConfigureKeepsUnchangedPenalties(t *testing.T) {
	c := newClock()
	e := New(Options{Now: c.Now})
	a := params(nil)
	b := params(func(p *Params) { p.Name = "q" })
	tabs := e.Configure([]Params{a, b})
	k := ip("192.0.2.7")
	offend(tabs[0], k, 3, c)
	offend(tabs[1], k, 2, c)
	b2 := b
	b2.Threshold = 2
	next := e.Configure([]Params{a, b2})
	if next[0] != tabs[0] {
		t.Fatal("an unchanged penalty lost its table")
	}
	if _, ok := next[0].Banned(k, c.Now()); !ok {
		t.Fatal("an unchanged penalty lost its ban")
	}
	if next[1] == tabs[1] {
		t.Fatal("a changed penalty kept its old table")
	}
}

func TestOffenderShortLivedAndMessages(t *testing.T) {
	c := newClock()
	e := New(Options{Now: c.Now})
	tb := e.Configure([]Params{params(func(p *Params) { p.Threshold = 2 })})[0]
	k := ip("192.0.2.7")
	o := tb.Track(nil, c.Now(), k, 5*time.Second, true)
	c.Add(6 * time.Second)
	o.Closed() // lived 6s: not short
	o = tb.Track(nil, c.Now(), k, 5*time.Second, true)
	c.Add(time.Second)
	o.Offend(KindMessage)
	o.Closed()
	o.Closed() // counted once
	if _, ok := tb.Banned(k, c.Now()); !ok {
		t.Fatal("a message violation and a short-lived close: want a ban at threshold 2")
	}
	if got := tb.offences[KindShortLived].Load(); got != 1 {
		t.Fatalf("short-lived offences: got %d, want 1", got)
	}
	var nilO *Offender
	nilO.Closed()
	nilO.Offend(KindMessage)
}

func TestParseKeyRoundTrip(t *testing.T) {
	for _, k := range []keys.Key{ip("192.0.2.7"), ip("2001:db8::1"), keys.Subnet(netip.MustParseAddr("192.0.2.7"), 24, 64), keys.String("alice")} {
		got, err := ParseKey(k.String())
		if err != nil || got != k {
			t.Fatalf("%v: got %v %v", k, got, err)
		}
	}
	for _, s := range []string{"", "global", "s:", "10.0.0.1/8", "nonsense"} {
		if _, err := ParseKey(s); err == nil {
			t.Fatalf("%q: want an error", s)
		}
	}
}
