package pressure

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeReads is an injected reader whose values the test sets.
type fakeReads struct {
	mu sync.Mutex
	r  Readings
}

func (f *fakeReads) set(r Readings) {
	f.mu.Lock()
	f.r = r
	f.mu.Unlock()
}

func (f *fakeReads) read() Readings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.r
}

// TestHysteresis steps a monitor through readings at fixed values: a
// signal turns on at enter, stays on until below leave, and the level
// follows; each change is logged once.
func TestHysteresis(t *testing.T) {
	cfg := &Config{Connections: &Signal{Cap: 100, Enter: 0.9, Leave: 0.7}, RefuseUnverified: true}
	f := &fakeReads{}
	var logs bytes.Buffer
	var changes []int
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	now := t0
	m := New(cfg, Options{Read: f.read, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Now: func() time.Time { return now }, OnChange: func(s Status) { changes = append(changes, s.Level) }})
	steps := []struct {
		conns, level int
	}{{0, 0}, {89, 0}, {90, 1}, {95, 1}, {71, 1}, {70, 1}, {69, 0}, {89, 0}, {100, 1}}
	for i, s := range steps {
		now = t0.Add(time.Duration(i) * time.Second)
		f.set(Readings{Conns: s.conns, FDs: -1, Heap: -1})
		if got := m.Sample(); got != s.level || m.Level() != s.level {
			t.Errorf("step %d: conns %d: level %d (Level %d), want %d", i, s.conns, got, m.Level(), s.level)
		}
	}
	if want := []int{1, 0, 1}; !equal(changes, want) {
		t.Errorf("changes = %v, want %v", changes, want)
	}
	if n := strings.Count(logs.String(), "pressure level changed"); n != 3 {
		t.Errorf("%d change lines, want 3:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "level=1 previous=0 connections.ratio=0.9") {
		t.Errorf("log lacks the entering line with its ratio:\n%s", logs.String())
	}
	st := m.Status()
	if st.Level != 1 || !st.Since.Equal(t0.Add(8*time.Second)) || st.Samples != uint64(len(steps)) || len(st.Signals) != 1 || st.Signals[0].Ratio != 1 {
		t.Errorf("status = %+v", st)
	}
}

// TestAnySignal: the level is 1 while any signal is on; an unavailable
// reading keeps a signal's state and is logged once.
func TestAnySignal(t *testing.T) {
	cfg := &Config{FDs: &Signal{Enter: 0.5, Leave: 0.4}, Heap: &Signal{Enter: 0.8}, TightenPenalties: true}
	f := &fakeReads{}
	var logs bytes.Buffer
	m := New(cfg, Options{Read: f.read, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	f.set(Readings{FDs: 10, NoFile: 100, Heap: 90, MemoryLimit: 100})
	if m.Sample() != 1 || !m.TightenPenalties() {
		t.Fatal("heap at 0.9 of its limit: level 0")
	}
	f.set(Readings{FDs: 60, NoFile: 100, Heap: 10, MemoryLimit: 100})
	if m.Sample() != 1 {
		t.Fatal("fds at 0.6: level 0")
	}
	f.set(Readings{FDs: 60, NoFile: 100, Heap: -1}) // heap unavailable: stays off
	if m.Sample() != 1 || m.Status().Signals[1].On {
		t.Fatalf("heap unavailable: %+v", m.Status())
	}
	f.set(Readings{FDs: -1, Heap: -1}) // fds unavailable: stays on
	if m.Sample() != 1 || !m.Status().Signals[0].On {
		t.Fatalf("fds unavailable: %+v", m.Status())
	}
	if n := strings.Count(logs.String(), "signal unavailable"); n != 2 {
		t.Errorf("%d unavailable lines, want 2 (one per signal):\n%s", n, logs.String())
	}
	f.set(Readings{FDs: 39, NoFile: 100, Heap: 0, MemoryLimit: 100})
	if m.Sample() != 0 || m.TightenPenalties() {
		t.Error("every signal below leave: level 1")
	}
}

// TestSetConfig: a section removed turns its signal off; nil means
// level 0.
func TestSetConfig(t *testing.T) {
	f := &fakeReads{}
	f.set(Readings{Conns: 10, FDs: 99, NoFile: 100, Heap: -1})
	m := New(&Config{FDs: &Signal{}}, Options{Read: f.read})
	if m.Sample() != 1 {
		t.Fatal("fds at 0.99: level 0")
	}
	m.SetConfig(&Config{Connections: &Signal{Cap: 100}})
	if m.Sample() != 0 {
		t.Error("fds removed, connections at 0.1: level 1")
	}
	m.SetConfig(nil)
	if m.Sample() != 0 || len(m.Status().Signals) != 0 {
		t.Error("no section: level or signals")
	}
}

// TestRun: Run samples on its own goroutine until its context ends.
func TestRun(t *testing.T) {
	f := &fakeReads{}
	f.set(Readings{Conns: 100, FDs: -1, Heap: -1})
	m := New(&Config{Interval: minInterval, Connections: &Signal{Cap: 100}}, Options{Read: f.read})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); m.Level() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sample within 10s")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestSystemReadings reads this process: where /proc/self/fd exists the
// count is positive and below RLIMIT_NOFILE; the heap is positive.
func TestSystemReadings(t *testing.T) {
	s := newSystemReader()
	if _, err := os.Stat("/proc/self/fd"); err == nil {
		n, limit := s.fds()
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n2, _ := s.fds()
		if n <= 0 || limit <= 0 || int64(n) >= limit || n2 != n+1 {
			t.Errorf("fds = %d then %d (one more opened), limit %d", n, n2, limit)
		}
		if l := listFDs(); l != n2 {
			t.Errorf("listed %d descriptors, counted %d", l, n2)
		}
	}
	if used, _ := s.heap(); used <= 0 {
		t.Errorf("heap = %d", used)
	}
}

func TestProblems(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no signal", Config{RefuseUnverified: true}, ": no signal"},
		{"no action", Config{FDs: &Signal{}}, ": no action"},
		{"cap required", Config{Connections: &Signal{}, TightenPenalties: true}, "connections.cap: must be positive"},
		{"cap on fds", Config{FDs: &Signal{Cap: 3}, TightenPenalties: true}, "fds.cap: only the connections"},
		{"leave above enter", Config{Heap: &Signal{Enter: 0.5, Leave: 0.6}, TightenPenalties: true}, "heap.leave: must be at least 0 and below enter"},
		{"enter above 1", Config{Heap: &Signal{Enter: 1.5}, TightenPenalties: true}, "heap.enter: must be in (0, 1]"},
		{"factor", Config{Heap: &Signal{}, Scale: &Scale{Rules: []string{"a"}, Factor: 2}}, "scale.factor: must be in (0, 1]"},
		{"scale rules", Config{Heap: &Signal{}, Scale: &Scale{Factor: 0.5}}, "scale.rules: name at least one"},
		{"keep_tiers alone", Config{Heap: &Signal{}, TightenPenalties: true, KeepTiers: &KeepTiers{Claim: "plan", Values: []string{"pro"}}}, "keep_tiers: needs refuse_unverified"},
		{"keep_tiers values", Config{Heap: &Signal{}, RefuseUnverified: true, KeepTiers: &KeepTiers{Claim: "plan"}}, "keep_tiers.values: name at least one"},
		{"interval", Config{Interval: time.Millisecond, Heap: &Signal{}, TightenPenalties: true}, "interval: must be at least 10ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var all []string
			for _, p := range tt.cfg.Problems() {
				all = append(all, p.Path+": "+p.Msg)
			}
			if !strings.Contains(strings.Join(all, "\n"), tt.want) {
				t.Errorf("problems %q lack %q", all, tt.want)
			}
		})
	}
	ok := Config{Heap: &Signal{}, Scale: &Scale{Rules: []string{"a"}, Factor: 0.5}}
	if p := ok.Problems(); len(p) != 0 {
		t.Errorf("valid config: %v", p)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkReadFDs measures one count of the open descriptors with about
// 100 and 10,000 open (what the fds signal costs the sampling goroutine
// per interval; it never runs on a handshake): fds (one stat where the
// kernel reports the count) and list (the directory listing, the path of
// kernels before Linux 6.2 and of other systems).
func BenchmarkReadFDs(b *testing.B) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		b.Skip("no /proc/self/fd")
	}
	s := newSystemReader()
	var open []*os.File
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for _, n := range []int{100, 10000} {
		for len(open) < n {
			f, err := os.Open(os.DevNull)
			if err != nil {
				b.Skip(err)
			}
			open = append(open, f)
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got, _ := s.fds(); got < n {
					b.Fatalf("counted %d, at least %d open", got, n)
				}
			}
		})
		b.Run("list/"+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got := listFDs(); got < n {
					b.Fatalf("listed %d, at least %d open", got, n)
				}
			}
		})
	}
}
