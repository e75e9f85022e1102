package penalty

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"time"
)

// BanView is a ban as the admin handler and the inspector list it.
type BanView struct {
	Penalty string `json:"penalty"`
	Key     string `json:"key"`
	Reason  string `json:"reason"`
	Level   int    `json:"level"`
	// Remaining is the time left, in whole seconds rounded up.
	Remaining int64 `json:"remaining_seconds"`
	DryRun    bool  `json:"dry_run,omitempty"`
}

// Views returns the bans in force as operators see them (time left by the
// engine's clock), longest remaining first, at most n (n ≤ 0: all).
func (e *Engine) Views(n int) []BanView { return view(e.Bans(n), e.now()) }

func view(bans []Ban, now time.Time) []BanView {
	out := make([]BanView, 0, len(bans))
	for _, b := range bans {
		left := int64(math.Ceil(b.Until.Sub(now).Seconds()))
		out = append(out, BanView{Penalty: b.Penalty, Key: b.Key.String(), Reason: b.Reason, Level: b.Level, Remaining: max(left, 0), DryRun: b.DryRun})
	}
	return out
}

// request is the body of POST /ban and POST /unban.
type request struct {
	Penalty  string `json:"penalty"`
	Key      string `json:"key"`
	Duration string `json:"duration"` // Go duration, for /ban
}

// Handler serves the engine's admin API, mounted at a prefix with
// http.StripPrefix:
//
//	GET  /        the bans in force (JSON list, longest first; ?n= at most n)
//	POST /ban     {"penalty": "...", "key": "192.0.2.7", "duration": "10m"}
//	POST /unban   {"penalty": "...", "key": "192.0.2.7"}
//
// Keys are written as keys.Key.String renders them (see ParseKey). It
// lists client addresses and user ids and lets its caller ban anyone:
// serve it only on an admin address, never on the public listener.
func (e *Engine) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, e.Views(0))
	})
	mux.HandleFunc("POST /ban", func(w http.ResponseWriter, r *http.Request) {
		e.serveBan(w, r, true)
	})
	mux.HandleFunc("POST /unban", func(w http.ResponseWriter, r *http.Request) {
		e.serveBan(w, r, false)
	})
	return mux
}

func (e *Engine) serveBan(w http.ResponseWriter, r *http.Request, ban bool) {
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "penalty: body must be JSON {penalty, key[, duration]}"})
		return
	}
	k, err := ParseKey(req.Key)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if !ban {
		had, err := e.Unban(r.Context(), req.Penalty, k)
		e.answer(w, err, map[string]any{"unbanned": had})
		return
	}
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "penalty: duration must be a positive Go duration such as 10m"})
		return
	}
	e.answer(w, e.Ban(r.Context(), req.Penalty, k, d), map[string]any{"banned": req.Key, "seconds": int64(math.Ceil(d.Seconds()))})
}

func (e *Engine) answer(w http.ResponseWriter, err error, ok any) {
	switch {
	case errors.Is(err, ErrUnknownPenalty):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case err != nil:
		// Recorded here; sharing with other instances failed.
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusOK, ok)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
