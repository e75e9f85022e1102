package ws

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/wslimit/wslimit/policy"
)

// Defaults of the rejection-log limiter.
const (
	DefaultLogRate  = 10 // rejection lines per second, sustained
	DefaultLogBurst = 50
)

// rejectLog writes rejection lines through a token bucket so that an
// attack cannot flood the log: lines over the budget are counted, and the
// next line written reports how many were suppressed.
type rejectLog struct {
	log     *slog.Logger
	now     func() time.Time
	hashKey bool

	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed uint64
}

func newRejectLog(log *slog.Logger, now func() time.Time, perSec float64, burst int, hashKey bool) *rejectLog {
	if perSec <= 0 {
		perSec = DefaultLogRate
	}
	if burst <= 0 {
		burst = DefaultLogBurst
	}
	return &rejectLog{log: log, now: now, hashKey: hashKey, lim: rate.NewLimiter(rate.Limit(perSec), burst)}
}

// take reports whether a line may be written now and, if so, how many
// lines were suppressed before it.
func (l *rejectLog) take() (ok bool, suppressed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lim.AllowN(l.now(), 1) {
		l.suppressed++
		return false, 0
	}
	s := l.suppressed
	l.suppressed = 0
	return true, s
}

// Suppressed returns the number of lines suppressed since the last line
// written.
func (l *rejectLog) Suppressed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.suppressed
}

// keyString is the refused key as logged; "" when the refusal has none (a
// missing identity, a store error), which must not read as key=global.
func (l *rejectLog) keyString(d *policy.Decision) string {
	c, ok := d.RefusedClaim()
	if !ok || d.Reason == policy.ReasonMissing {
		return ""
	}
	s := c.Key.String()
	if !l.hashKey || d.Rule == "" {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

func (l *rejectLog) write(r *http.Request, d *policy.Decision) {
	ok, suppressed := l.take()
	if !ok {
		return
	}
	msg := "wslimit: handshake rejected"
	if d.WouldReject {
		msg = "wslimit: handshake would be rejected (dry run)"
	}
	attrs := []slog.Attr{
		slog.String("rule", d.Rule),
		slog.String("reason", d.Reason.String()),
	}
	if k := l.keyString(d); k != "" {
		attrs = append(attrs, slog.String("key", k))
	}
	attrs = append(attrs,
		slog.Duration("retry_after", d.RetryAfter),
		slog.Bool("invalid_token", d.InvalidToken))
	if !l.hashKey {
		attrs = append(attrs, slog.String("client_ip", d.ClientIP.String()))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", suppressed))
	}
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	l.log.LogAttrs(ctx, slog.LevelInfo, msg, attrs...)
}
