package reload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/wslimit/wslimit/policy"
)

// DefaultDebounce is how long a burst of file events must be quiet before
// the file is read, when Options.Debounce is zero.
const DefaultDebounce = 100 * time.Millisecond

// configMapData is the symlink Kubernetes swaps atomically when a mounted
// ConfigMap changes; the policy file itself gets no event then.
const configMapData = "..data"

// maxRead bounds what is read of a policy file: more than policy.Parse
// accepts (it refuses the file with a clear error), less than a mistaken
// path to a huge file would cost.
const maxRead = 4 << 20

// Options configure a Watcher. The zero value is usable: file changes
// debounced by DefaultDebounce, no SIGHUP handling, no logging.
type Options struct {
	// Logger receives "policy reloaded" (Info) and "policy reload failed"
	// (Error) lines; nil means no logging.
	Logger *slog.Logger
	// Debounce is how long file events must be quiet before the file is
	// read; zero means DefaultDebounce. SIGHUP and Reload are not debounced.
	Debounce time.Duration
	// SIGHUP makes the watcher reload on SIGHUP as well. The signal is
	// registered before Watch returns and unregistered when the watcher
	// stops.
	SIGHUP bool
	// OnError, when set, is called with every failed reload's error (after
	// it is logged and counted), for alerts and metrics.
	OnError func(error)
}

// Watcher reloads a policy file when it changes, on SIGHUP (optional) and
// on Reload, and hands every policy that loads to its apply function. A
// file that fails to load is reported and the running policy is kept.
// A Watcher is safe for concurrent use.
type Watcher struct {
	path    string
	base    string
	apply   func(*policy.Policy)
	onError func(error)
	log     *slog.Logger
	delay   time.Duration

	fsw    *fsnotify.Watcher
	sig    chan os.Signal
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex // serialises reloads: read, parse and apply, one at a time, in order
	// started is the state section of the file when Watch was called (nil
	// if it did not decode): what the running store was built from, as far
	// as the watcher can tell. Guarded by mu.
	started *policy.StateConfig

	stat    sync.Mutex // guards hash and lastErr; never held while calling out
	hash    string
	lastErr error

	reloads  atomic.Uint64
	failures atomic.Uint64
}

// Watch starts watching the policy file at path and returns at once. The
// caller has already loaded and installed the first policy (policy.LoadFile,
// ws.New); the watcher only reloads: apply receives each later policy that
// loads (typically Guard.SetPolicy). The watcher stops when ctx is done or
// Close is called.
//
// The directory holding path is watched, not the file, so that editors that
// write a new file and rename it over the old one, and Kubernetes ConfigMap
// volumes that swap their "..data" symlink, are seen. The content of the file
// when Watch is called is the baseline: a file event whose content hashes the
// same as the running policy's does nothing.
func Watch(ctx context.Context, path string, apply func(*policy.Policy), opts Options) (*Watcher, error) {
	if path == "" {
		return nil, errors.New("reload: empty path")
	}
	if apply == nil {
		return nil, errors.New("reload: nil apply function")
	}
	w := &Watcher{
		path:    path,
		base:    filepath.Base(path),
		apply:   apply,
		onError: opts.OnError,
		log:     opts.Logger,
		delay:   opts.Debounce,
		done:    make(chan struct{}),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.delay <= 0 {
		w.delay = DefaultDebounce
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	if err := fsw.Add(filepath.Dir(path)); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("reload: watch %s: %w", filepath.Dir(path), err)
	}
	w.fsw = fsw
	// The baseline is read after the watch is in place, so a change from
	// here on is an event.
	if data, err := readFile(path); err == nil {
		w.hash = digest(data)
		if p, err := policy.Parse(data, path); err == nil {
			st := p.Config().State
			w.started = &st
		}
	}
	if opts.SIGHUP {
		w.sig = make(chan os.Signal, 1)
		signal.Notify(w.sig, syscall.SIGHUP)
	}
	ctx, w.cancel = context.WithCancel(ctx)
	go w.run(ctx)
	return w, nil
}

// Close stops the watcher and waits for its goroutine to finish. It is
// idempotent. Reload still works after Close.
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	return nil
}

// Reload reads the file now and applies it if it loads, even when its
// content is unchanged (the policy may name files of its own, such as a
// JWT key_file, that did change). It returns the load error, with
// file:line:column, when the file does not load; the running policy is
// then kept.
func (w *Watcher) Reload() error {
	_, err := w.reload("call", true)
	return err
}

// LastError returns the error of the last reload attempt, or nil when it
// succeeded or the file is back to the running policy's content.
func (w *Watcher) LastError() error {
	w.stat.Lock()
	defer w.stat.Unlock()
	return w.lastErr
}

// Hash returns a short SHA-256 prefix (16 hex digits) of the file content
// the running policy was loaded from: the baseline read by Watch, then that
// of every applied reload. Empty when the file could not be read at start.
// `sha256sum FILE | cut -c1-16` prints the same.
func (w *Watcher) Hash() string {
	w.stat.Lock()
	defer w.stat.Unlock()
	return w.hash
}

// Reloads counts the policies applied. A reload is counted once it is
// complete: applied and logged.
func (w *Watcher) Reloads() uint64 { return w.reloads.Load() }

// Failures counts the reloads that failed and kept the running policy. A
// failure is counted once it is complete: recorded, logged and passed to
// Options.OnError.
func (w *Watcher) Failures() uint64 { return w.failures.Load() }

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer w.fsw.Close()
	if w.sig != nil {
		defer signal.Stop(w.sig)
	}
	var (
		timer *time.Timer
		fire  <-chan time.Time // nil while no reload is pending
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if !w.relevant(ev) {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(w.delay)
			} else {
				timer.Reset(w.delay)
			}
			fire = timer.C
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			w.log.LogAttrs(ctx, slog.LevelWarn, "policy watch error",
				slog.String("path", w.path), slog.String("error", err.Error()))
		case <-fire:
			fire = nil
			_, _ = w.reload("file", false) // logged and recorded
		case <-w.sig: // nil channel without Options.SIGHUP: never ready
			if timer != nil {
				timer.Stop() // the signal's reload reads the latest content
			}
			fire = nil
			_, _ = w.reload("signal", true)
		}
	}
}

// relevant reports whether ev may have changed the policy file: an event
// on its name, or on a ConfigMap's "..data" symlink. Pure attribute changes
// are ignored.
func (w *Watcher) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	name := filepath.Base(ev.Name)
	return name == w.base || name == configMapData
}

// reload reads and parses the file and applies it. Unless force is set, a
// file whose content hashes the same as the running policy's is skipped.
func (w *Watcher) reload(trigger string, force bool) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ctx := context.Background()
	data, err := readFile(w.path)
	var p *policy.Policy
	if err == nil {
		sum := digest(data)
		if !force && sum == w.Hash() {
			w.stat.Lock()
			w.lastErr = nil // the file is what runs
			w.stat.Unlock()
			w.log.LogAttrs(ctx, slog.LevelDebug, "policy file unchanged",
				slog.String("path", w.path), slog.String("trigger", trigger), slog.String("hash", sum))
			return false, nil
		}
		if p, err = policy.Parse(data, w.path); err == nil {
			w.apply(p)
			w.stat.Lock()
			w.hash, w.lastErr = sum, nil
			w.stat.Unlock()
			w.log.LogAttrs(ctx, slog.LevelInfo, "policy reloaded",
				slog.String("path", w.path), slog.String("trigger", trigger),
				slog.Int("rules", len(p.Rules())), slog.String("hash", sum))
			if w.started != nil {
				if changed := restartFields(*w.started, p.Config().State); len(changed) > 0 {
					w.log.LogAttrs(ctx, slog.LevelWarn, "policy reloaded, but state settings need a restart",
						slog.String("path", w.path), slog.Any("fields", changed))
				}
			}
			w.reloads.Add(1) // last: a counted reload is complete
			return true, nil
		}
	}
	w.stat.Lock()
	w.lastErr = err
	w.stat.Unlock()
	// One line per problem: a policy file's problems are joined with
	// newlines, which a log line would show as literal \n.
	problems := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		problems = j.Unwrap()
	}
	for _, e := range problems {
		w.log.LogAttrs(ctx, slog.LevelError, "policy reload failed; keeping the running policy",
			slog.String("path", w.path), slog.String("trigger", trigger),
			slog.Int("problems", len(problems)), slog.String("error", e.Error()))
	}
	if w.onError != nil {
		w.onError(err)
	}
	w.failures.Add(1) // last: a counted failure is complete
	return false, err
}

// restartFields names the state settings that differ between the state the
// store was built from and a reloaded one, and that a reload cannot apply.
func restartFields(old, cur policy.StateConfig) []string {
	var out []string
	if orDefault(old.Store, "memory") != orDefault(cur.Store, "memory") {
		out = append(out, "state.store")
	}
	if orDefault(old.OnFull, "evict") != orDefault(cur.OnFull, "evict") {
		out = append(out, "state.on_full")
	}
	if !reflect.DeepEqual(old.Redis, cur.Redis) {
		out = append(out, "state.redis")
	}
	return out
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// readFile reads at most one byte more than a policy may hold, so that
// policy.Parse reports an oversized file without it being read whole.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRead))
	if err != nil {
		return nil, fmt.Errorf("reload: read %s: %w", path, err)
	}
	return data, nil
}

// digest is the first 16 hex digits of data's SHA-256.
func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}
