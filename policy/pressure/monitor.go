package pressure

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Readings are one sample of the signals' values and ceilings. A value
// or ceiling that is unknown is negative (or a ceiling 0): that signal
// reads as unavailable and keeps its state.
type Readings struct {
	// Conns is the number of live connections.
	Conns int
	// FDs is the number of open descriptors; NoFile is RLIMIT_NOFILE.
	FDs    int
	NoFile int64
	// Heap is the Go memory GOMEMLIMIT counts; MemoryLimit is GOMEMLIMIT.
	Heap        int64
	MemoryLimit int64
}

// Options configure a Monitor. The zero value reads the system (without
// a connections signal: give Connections for that).
type Options struct {
	// Connections returns the live connection count the connections
	// signal compares with its cap; nil means that signal is unavailable.
	// It is called from the sampling goroutine, never on a handshake.
	Connections func() int
	// Read, when set, replaces the system readings (tests inject values
	// here); Connections is then not called.
	Read func() Readings
	// Logger receives a line at every level change (and once per signal
	// that cannot be read); nil means no logging.
	Logger *slog.Logger
	// Now is the clock of Status.Since; nil means time.Now.
	Now func() time.Time
	// OnChange, when set, is called after every level change, from the
	// sampling goroutine.
	OnChange func(Status)
}

// Signal names, as in the policy, logs and metrics.
const (
	SignalConnections = "connections"
	SignalFDs         = "fds"
	SignalHeap        = "heap"
)

var signalNames = [3]string{SignalConnections, SignalFDs, SignalHeap}

// SignalStatus is one signal's last sample.
type SignalStatus struct {
	Name string `json:"name"`
	// Ratio is the last value over its ceiling; -1 when unavailable.
	Ratio float64 `json:"ratio"`
	// On reports whether the signal is past its enter threshold and not
	// yet below its leave threshold.
	On bool `json:"on"`
	// Value and Ceiling are the last readings (-1 when unknown).
	Value   int64 `json:"value"`
	Ceiling int64 `json:"ceiling"`
}

// Status is the monitor's state, for the inspector and metrics.
type Status struct {
	// Level is 1 while any signal is on, else 0.
	Level int `json:"level"`
	// Since is when Level last changed (the zero time before any change).
	Since time.Time `json:"since,omitzero"`
	// Signals lists the configured signals.
	Signals []SignalStatus `json:"signals,omitempty"`
	// Samples counts samples taken.
	Samples uint64 `json:"samples"`
}

// Monitor samples the signals of a pressure section and holds the level.
type Monitor struct {
	opts  Options
	cfg   atomic.Pointer[Config]
	level atomic.Int32
	reset chan struct{} // wakes Run when the interval changes

	mu      sync.Mutex // serialises sampling; guards what follows
	on      [3]bool
	last    [3]SignalStatus
	since   time.Time
	samples uint64
	warned  [3]bool // "cannot read" logged
	sys     *systemReader
}

// New returns a Monitor for cfg (nil: no section, level 0 for ever until
// SetConfig gives one). cfg should have been checked (Problems, or by
// package policy when it came in a policy); New does not modify it.
func New(cfg *Config, opts Options) *Monitor {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Monitor{opts: opts, reset: make(chan struct{}, 1), sys: newSystemReader()}
	m.cfg.Store(cfg)
	return m
}

// Level returns the pressure level: 0 or 1. It is one atomic load, cheap
// enough for every handshake.
func (m *Monitor) Level() int { return int(m.level.Load()) }

// TightenPenalties reports whether a penalty engine should be stricter
// now: the level is above 0 and the section asks for it.
func (m *Monitor) TightenPenalties() bool {
	c := m.cfg.Load()
	return c != nil && c.TightenPenalties && m.Level() > 0
}

// SetConfig applies cfg (a reloaded policy's section, or nil for none)
// from the next sample on. Signals that stay configured keep their on/off
// state; a signal removed from the section is off.
func (m *Monitor) SetConfig(cfg *Config) {
	m.cfg.Store(cfg)
	select {
	case m.reset <- struct{}{}:
	default:
	}
}

// Run samples every interval until ctx is done. Call it once, on a
// goroutine of its own.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTimer(m.cfg.Load().interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.reset:
		case <-t.C:
			m.Sample()
		}
		t.Reset(m.cfg.Load().interval())
	}
}

// Status returns the last sample and the level.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Level: m.Level(), Since: m.since, Samples: m.samples}
	cfg := m.cfg.Load()
	for i, sig := range cfg.signals() {
		if sig != nil {
			s := m.last[i]
			if s.Name == "" { // not sampled yet
				s = SignalStatus{Name: signalNames[i], Ratio: -1, Value: -1, Ceiling: -1}
			}
			st.Signals = append(st.Signals, s)
		}
	}
	return st
}

// signals returns the configured signals in signalNames order.
func (c *Config) signals() [3]*Signal {
	if c == nil {
		return [3]*Signal{}
	}
	return [3]*Signal{c.Connections, c.FDs, c.Heap}
}

// Sample takes one reading, updates every signal and the level, and
// returns the level. Run calls it every interval; tests call it directly.
func (m *Monitor) Sample() int {
	cfg := m.cfg.Load()
	sigs := cfg.signals()
	m.mu.Lock()
	rd := m.read(cfg)
	values := [3][2]int64{{int64(rd.Conns), 0}, {int64(rd.FDs), rd.NoFile}, {rd.Heap, rd.MemoryLimit}}
	if cfg != nil && cfg.Connections != nil {
		values[0][1] = int64(cfg.Connections.Cap)
	}
	anyOn := false
	for i, sig := range sigs {
		if sig == nil {
			m.on[i] = false
			continue
		}
		m.on[i] = m.update(i, sig, values[i][0], values[i][1])
		anyOn = anyOn || m.on[i]
	}
	m.samples++
	level := 0
	if anyOn {
		level = 1
	}
	old := int(m.level.Swap(int32(level)))
	var st Status
	if old != level {
		m.since = m.opts.Now()
		st = Status{Level: level, Since: m.since, Samples: m.samples}
		for i, sig := range sigs {
			if sig != nil {
				st.Signals = append(st.Signals, m.last[i])
			}
		}
	}
	m.mu.Unlock()
	if old != level {
		m.changed(old, st)
	}
	return level
}

// update applies one reading to signal i and returns whether it is on.
func (m *Monitor) update(i int, sig *Signal, value, ceiling int64) bool {
	m.last[i] = SignalStatus{Name: signalNames[i], Ratio: -1, Value: value, Ceiling: ceiling, On: m.on[i]}
	if value < 0 || ceiling <= 0 {
		if !m.warned[i] && m.opts.Logger != nil {
			m.warned[i] = true
			m.opts.Logger.Warn("wslimit: pressure signal unavailable; it stays as it is", "signal", signalNames[i])
		}
		return m.on[i]
	}
	ratio := float64(value) / float64(ceiling)
	enter, leave := sig.thresholds()
	on := m.on[i]
	switch {
	case !on && ratio >= enter:
		on = true
	case on && ratio < leave:
		on = false
	}
	m.last[i].Ratio, m.last[i].On = ratio, on
	return on
}

// changed logs a level change and tells OnChange.
func (m *Monitor) changed(old int, st Status) {
	if l := m.opts.Logger; l != nil {
		var on []string
		attrs := []any{"level", st.Level, "previous", old}
		for _, s := range st.Signals {
			if s.On {
				on = append(on, s.Name)
			}
			attrs = append(attrs, slog.Group(s.Name, "ratio", s.Ratio, "value", s.Value, "ceiling", s.Ceiling))
		}
		attrs = append(attrs, "signals_on", strings.Join(on, ","))
		lvl := slog.LevelInfo
		if st.Level > old {
			lvl = slog.LevelWarn
		}
		l.Log(context.Background(), lvl, "wslimit: pressure level changed", attrs...)
	}
	if m.opts.OnChange != nil {
		m.opts.OnChange(st)
	}
}

// read returns the readings cfg needs: injected, or from the system.
func (m *Monitor) read(cfg *Config) Readings {
	if m.opts.Read != nil {
		return m.opts.Read()
	}
	rd := Readings{Conns: -1, FDs: -1, Heap: -1}
	sigs := cfg.signals()
	if sigs[0] != nil && m.opts.Connections != nil {
		rd.Conns = m.opts.Connections()
	}
	if sigs[1] != nil {
		rd.FDs, rd.NoFile = m.sys.fds()
	}
	if sigs[2] != nil {
		rd.Heap, rd.MemoryLimit = m.sys.heap()
	}
	return rd
}
