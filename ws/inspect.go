package ws

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/capacity"
	"github.com/wslimit/wslimit/policy/pressure"
)

// DefaultInspectTop is how many keys per rule the inspection handler lists.
const DefaultInspectTop = 10

// Inspection is the document served by InspectHandler.
type Inspection struct {
	// Mode is "enforce" or "dry_run".
	Mode string `json:"mode"`
	// RejectMode is status, close or auto.
	RejectMode string `json:"reject_mode"`
	// Closing is the number of refused connections being closed.
	Closing int `json:"closing"`
	// Rules describes each rule of the live policy with its state.
	Rules []RuleInspection `json:"rules"`
	// Pressure is the pressure monitor's status (Options.Pressure); nil
	// without one.
	Pressure *pressure.Status `json:"pressure,omitempty"`
	// Policy is the live policy's configuration.
	Policy policy.Config `json:"policy"`
}

// RuleInspection is one rule's limits and state.
type RuleInspection struct {
	Name        string `json:"name"`
	Key         string `json:"key"`
	Connections int    `json:"connections,omitempty"`
	// ConnectionsAuto is true when Connections was derived from the
	// machine's capacity (connections: auto).
	ConnectionsAuto bool    `json:"connections_auto,omitempty"`
	Rate            float64 `json:"rate_per_second,omitempty"`
	Burst           int     `json:"burst,omitempty"`
	// State, present when the store can report it (policy.Inspector).
	TrackedKeys     *int       `json:"tracked_keys,omitempty"`
	LiveConnections *int       `json:"live_connections,omitempty"`
	Buckets         *int       `json:"buckets,omitempty"`
	Evictions       *uint64    `json:"bucket_evictions,omitempty"`
	Top             []KeyCount `json:"top_keys,omitempty"`
}

// KeyCount is a key and the connections it holds.
type KeyCount struct {
	Key         string `json:"key"`
	Connections int    `json:"connections"`
}

// Inspect returns the live policy and, when the store implements
// policy.Inspector, per rule the tracked keys, live connections and the top
// keys by live connections.
func (g *Guard) Inspect(top int) Inspection {
	p := g.lim.Policy()
	cfg := p.Config()
	cfg.Identity.Session = redactSession(cfg.Identity.Session)
	in := Inspection{Mode: cfg.Mode, RejectMode: p.Reject().Mode, Closing: g.Closing(), Policy: cfg}
	if in.Mode == "" {
		in.Mode = "enforce"
	}
	if g.press != nil {
		st := g.press.Status()
		in.Pressure = &st
	}
	insp, _ := g.store.(policy.Inspector)
	for i, c := range p.Rules() {
		ri := RuleInspection{Name: c.Rule, Connections: c.Conns, Rate: float64(c.Limit), Burst: c.Burst}
		if i < len(cfg.Rules) {
			ri.Key = cfg.Rules[i].Key
			ri.ConnectionsAuto = cfg.Rules[i].Connections == capacity.Auto
		}
		if insp != nil {
			st := insp.Stats(c.Rule)
			ri.TrackedKeys, ri.LiveConnections, ri.Buckets, ri.Evictions = &st.Keys, &st.Connections, &st.Buckets, &st.Evictions
			for _, kc := range insp.TopKeys(c.Rule, top) {
				ri.Top = append(ri.Top, KeyCount{Key: kc.Key.String(), Connections: kc.Count})
			}
		}
		in.Rules = append(in.Rules, ri)
	}
	return in
}

func redactSession(s *policy.SessionConfig) *policy.SessionConfig {
	if s == nil {
		return nil
	}
	c := *s
	c.Verify = nil
	return &c
}

// InspectHandler serves Inspect as JSON (?top=N keys per rule, default
// DefaultInspectTop, at most 1000). It lists client addresses and user ids:
// serve it only on an admin address, never on the public listener.
func (g *Guard) InspectHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		top := DefaultInspectTop
		if s := r.URL.Query().Get("top"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				http.Error(w, "ws: top must be a non-negative integer", http.StatusBadRequest)
				return
			}
			top = min(n, 1000)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(g.Inspect(top))
	})
}
