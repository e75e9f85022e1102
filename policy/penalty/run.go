package penalty

import (
	"context"
	"log/slog"
	"time"

	"github.com/wslimit/wslimit/keys"
)

// issued counts, logs and (when local) publishes a ban just recorded in t
// (ok) or dropped for want of room. Called outside t's lock.
func (e *Engine) issued(t *Table, k keys.Key, b ban, d time.Duration, ok, local bool) {
	if ok {
		t.issued.Add(1)
	}
	if e.log != nil {
		e.logBan(t, k.String(), b, d, ok)
	}
	if ok && local && e.queue != nil {
		select {
		case e.queue <- t.export(k, b):
		default:
			e.lost.Add(1)
		}
	}
}

func (e *Engine) logBan(t *Table, key string, b ban, d time.Duration, ok bool) {
	if !e.logLim.Allow() {
		e.suppressed.Add(1)
		return
	}
	msg := "wslimit: ban"
	switch {
	case !ok:
		msg = "wslimit: ban dropped: ban table full of active bans"
	case b.dry:
		msg = "wslimit: would ban (dry run)"
	}
	attrs := []slog.Attr{
		slog.String("penalty", t.p.Name), slog.String("key", key), slog.String("reason", b.reason.String()),
		slog.Int("level", b.level), slog.Duration("ban", d),
	}
	if n := e.suppressed.Swap(0); n > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", n))
	}
	e.log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
}

// Run shares bans through Options.Shared until ctx ends: it publishes the
// bans this instance issues and applies those of every instance, cached
// here until they expire. Without Shared it returns at once.
func (e *Engine) Run(ctx context.Context) error {
	if e.shared == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- e.shared.Subscribe(ctx, e.receive) }()
	for {
		select {
		case <-ctx.Done():
			return <-done
		case b := <-e.queue:
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			if err := e.shared.Publish(pctx, b); err != nil {
				e.lost.Add(1)
				if e.log != nil {
					e.log.LogAttrs(ctx, slog.LevelWarn, "wslimit: ban not shared", slog.String("penalty", b.Penalty), slog.String("error", err.Error()))
				}
			}
			cancel()
		}
	}
}

// receive applies a ban from another instance (or this one's echo).
func (e *Engine) receive(b Ban) {
	t, err := e.table(b.Penalty)
	if err != nil {
		return
	}
	if b.Until.IsZero() {
		t.unban(b.Key)
		return
	}
	ns := e.now().UnixNano()
	if b.Until.UnixNano() <= ns {
		return
	}
	if t.holds(b.Key, b.Until.UnixNano()) {
		return // known already: this instance's own ban, or one received before
	}
	kind := parseKind(b.Reason)
	if t.apply(b.Key, ban{until: b.Until.UnixNano(), level: b.Level, reason: kind, dry: b.DryRun || t.p.DryRun}, ns) {
		t.issued.Add(1)
	}
}
