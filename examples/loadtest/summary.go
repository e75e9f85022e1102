package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Summary is the result of a run.
type Summary struct {
	Mode        string  `json:"mode"`
	URL         string  `json:"url"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate_per_second,omitempty"` // 0: as fast as possible
	Interrupted bool    `json:"interrupted,omitempty"`     // the run was cancelled early

	ElapsedSeconds float64 `json:"elapsed_seconds"` // the whole run, holding included
	AttackSeconds  float64 `json:"attack_seconds"`  // the attempt phase, until the last handshake ended
	Attempts       int     `json:"attempts"`
	AttemptsPerSec float64 `json:"attempts_per_second"` // attempts / attack_seconds

	Admitted int `json:"admitted"`
	Rejected int `json:"rejected"`
	Errors   int `json:"errors"`

	// ByCode counts outcomes by status or close code: "101" for admitted
	// handshakes, "429" (or 401, 503...) for refusals before the upgrade,
	// "close 1013" (or 1008) for refusals by close after it.
	ByCode map[string]int `json:"by_code"`
	// ByRule counts refusals by "rule: reason", from the JSON body or the
	// close reason ("?" when the server did not say).
	ByRule map[string]int `json:"by_rule"`
	// RetryAfter counts refusals by their Retry-After (or "retry in Ns")
	// in seconds.
	RetryAfter map[string]int `json:"retry_after_seconds,omitempty"`
	// ErrorKinds counts errors (no HTTP response) by kind.
	ErrorKinds map[string]int `json:"errors_by_kind,omitempty"`

	// Latency is the handshake latency (TCP connect to the upgrade
	// response, admitted or refused), errors excluded.
	Latency Latency `json:"handshake_latency_ms"`

	PeakLive int `json:"peak_live"` // most upgraded connections open at once
	// ServerClosed counts admitted connections (conn-flood, token-reuse)
	// that the server closed while they were held.
	ServerClosed int `json:"server_closed,omitempty"`
	// XFFAddresses is the number of distinct X-Forwarded-For addresses sent.
	XFFAddresses int `json:"xff_addresses,omitempty"`
}

// Latency holds handshake latency percentiles in milliseconds.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// latency computes nearest-rank percentiles; it sorts d.
func latency(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		i = min(max(i, 0), len(d)-1)
		return ms(d[i])
	}
	return Latency{Count: len(d), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(d[len(d)-1])}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// maxErrorKinds bounds the distinct error kinds kept; the rest are "other".
const maxErrorKinds = 20

// recorder collects outcomes; it is safe for concurrent use.
type recorder struct {
	mu           sync.Mutex
	attempts     int
	admitted     int
	rejected     int
	errors       int
	live         int
	peakLive     int
	serverClosed int
	byCode       map[string]int
	byRule       map[string]int
	retryAfter   map[string]int
	errKinds     map[string]int
	lat          []time.Duration
}

func newRecorder() *recorder {
	return &recorder{
		byCode:     map[string]int{},
		byRule:     map[string]int{},
		retryAfter: map[string]int{},
		errKinds:   map[string]int{},
	}
}

func (r *recorder) attempt() {
	r.mu.Lock()
	r.attempts++
	r.mu.Unlock()
}

func (r *recorder) handshake(d time.Duration) {
	r.mu.Lock()
	r.lat = append(r.lat, d)
	r.mu.Unlock()
}

// admit records an admitted handshake, now a live connection (closeLive
// when it is closed).
func (r *recorder) admit() {
	r.mu.Lock()
	r.admitted++
	r.byCode["101"]++
	r.live++
	r.peakLive = max(r.peakLive, r.live)
	r.mu.Unlock()
}

// reject records a refusal; retryAfter < 0 means none was given.
func (r *recorder) reject(code, rule, reason string, retryAfter int) {
	if rule == "" {
		rule = "?"
	}
	if reason == "" {
		reason = "?"
	}
	r.mu.Lock()
	r.rejected++
	r.byCode[code]++
	r.byRule[rule+": "+reason]++
	if retryAfter >= 0 {
		r.retryAfter[strconv.Itoa(retryAfter)]++
	}
	r.mu.Unlock()
}

func (r *recorder) fail(kind string) {
	r.mu.Lock()
	r.errors++
	if _, ok := r.errKinds[kind]; !ok && len(r.errKinds) >= maxErrorKinds {
		kind = "other"
	}
	r.errKinds[kind]++
	r.mu.Unlock()
}

// closeLive records that an admitted connection was closed.
func (r *recorder) closeLive() {
	r.mu.Lock()
	r.live--
	r.mu.Unlock()
}

func (r *recorder) closedByServer() {
	r.mu.Lock()
	r.serverClosed++
	r.mu.Unlock()
}

// progress is a snapshot for the progress line.
type progress struct {
	attempts, admitted, rejected, errors, live int
	byCode                                     map[string]int
}

func (r *recorder) snapshot() progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return progress{
		attempts: r.attempts, admitted: r.admitted, rejected: r.rejected,
		errors: r.errors, live: r.live, byCode: maps.Clone(r.byCode),
	}
}

// summary fills s with the recorded outcomes.
func (r *recorder) summary(s *Summary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.Attempts, s.Admitted, s.Rejected, s.Errors = r.attempts, r.admitted, r.rejected, r.errors
	s.ByCode, s.ByRule = maps.Clone(r.byCode), maps.Clone(r.byRule)
	if len(r.retryAfter) > 0 {
		s.RetryAfter = maps.Clone(r.retryAfter)
	}
	if len(r.errKinds) > 0 {
		s.ErrorKinds = maps.Clone(r.errKinds)
	}
	s.Latency = latency(slices.Clone(r.lat))
	s.PeakLive, s.ServerClosed = r.peakLive, r.serverClosed
}

// line formats the progress line.
func (p progress) line(elapsed time.Duration) string {
	var rej []string
	for _, k := range sortedKeys(p.byCode) {
		if k != "101" {
			rej = append(rej, fmt.Sprintf("%s:%d", k, p.byCode[k]))
		}
	}
	s := fmt.Sprintf("%6.1fs  attempts %d  admitted %d  rejected %d", elapsed.Seconds(), p.attempts, p.admitted, p.rejected)
	if len(rej) > 0 {
		s += " [" + strings.Join(rej, " ") + "]"
	}
	return s + fmt.Sprintf("  errors %d  live %d", p.errors, p.live)
}

// sortedKeys returns m's keys: "101" first, then largest count first, then
// by name.
func sortedKeys(m map[string]int) []string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == "101":
			return -1
		case b == "101":
			return 1
		}
		if c := cmp.Compare(m[b], m[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return keys
}

// WriteText writes the summary for people.
func (s Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", s.Mode, s.URL)
	rate := "max"
	if s.Rate > 0 {
		rate = fmt.Sprintf("%g/s", s.Rate)
	}
	fmt.Fprintf(&b, "  %d attempts in %s (%.1f/s; concurrency %d, rate %s); total %s",
		s.Attempts, secs(s.AttackSeconds), s.AttemptsPerSec, s.Concurrency, rate, secs(s.ElapsedSeconds))
	if s.Interrupted {
		b.WriteString(" (interrupted)")
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  admitted  %6d\n", s.Admitted)
	fmt.Fprintf(&b, "  rejected  %6d\n", s.Rejected)
	fmt.Fprintf(&b, "  errors    %6d\n", s.Errors)
	section := func(title string, m map[string]int) {
		if len(m) == 0 {
			return
		}
		fmt.Fprintf(&b, "  %s\n", title)
		for _, k := range sortedKeys(m) {
			fmt.Fprintf(&b, "    %-32s %6d\n", k, m[k])
		}
	}
	section("by status / close code", s.ByCode)
	section("rejected by rule: reason", s.ByRule)
	ra := map[string]int{}
	for k, v := range s.RetryAfter {
		ra[k+"s"] = v
	}
	section("rejected by Retry-After", ra)
	section("errors by kind", s.ErrorKinds)
	l := s.Latency
	fmt.Fprintf(&b, "  handshake latency (%d): p50 %s  p90 %s  p99 %s  max %s\n",
		l.Count, fmtMS(l.P50), fmtMS(l.P90), fmtMS(l.P99), fmtMS(l.Max))
	fmt.Fprintf(&b, "  peak live connections %d", s.PeakLive)
	if s.ServerClosed > 0 {
		fmt.Fprintf(&b, "; closed by the server while open: %d", s.ServerClosed)
	}
	b.WriteString("\n")
	if s.XFFAddresses > 0 {
		fmt.Fprintf(&b, "  X-Forwarded-For addresses sent: %d\n", s.XFFAddresses)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func secs(v float64) string {
	return time.Duration(v * float64(time.Second)).Round(time.Millisecond).String()
}

func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.2fms", v)
	}
}

// WriteJSON writes the summary as indented JSON.
func (s Summary) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(s)
}
