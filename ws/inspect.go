package ws

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wslimit/wslimit/policy"
	"github.com/wslimit/wslimit/policy/capacity"
	"github.com/wslimit/wslimit/policy/penalty"
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
	// Bans lists the bans in force, longest remaining first (at most top).
	Bans []penalty.BanView `json:"bans,omitempty"`
	// Pressure is the pressure monitor's status (Options.Pressure); nil
	// without one.
	Pressure *pressure.Status `json:"pressure,omitempty"`
	// Policy is the live policy's configuration. InspectHandler serves it
	// as written in a policy file (see writtenConfig), not in the Go
	// encoding of Config, whose durations are integers of nanoseconds.
	Policy policy.Config `json:"-"`
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
	if top > 0 {
		in.Bans = g.pen.Views(top)
	}
	return in
}

// Penalties returns the engine holding the policy's bans (Options.Penalties
// or the Guard's own): Ban, Unban and the admin Handler.
func (g *Guard) Penalties() *penalty.Engine { return g.pen }

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
		in := g.Inspect(top)
		doc := struct {
			Inspection
			Policy any `json:"policy"`
		}{in, writtenConfig(reflect.ValueOf(in.Policy))}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc)
	})
}

// field is one member of a JSON object; object keeps its members in the
// order of the Go struct, which is the order of docs/policy.md.
type field struct {
	name  string
	value any
}

type object []field

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.name)
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

var durationType = reflect.TypeFor[time.Duration]()

// writtenConfig renders a configuration value as a policy file would
// write it: fields by their yaml names, durations as strings ("30s"), and
// nothing for a field left at its zero value (its default), so that no
// empty object or list appears. It returns nil for a zero value.
func writtenConfig(v reflect.Value) any {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.IsZero() || v.Kind() == reflect.Func {
		return nil
	}
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Struct:
		var o object
		for i := range v.NumField() {
			name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			if fv := writtenConfig(v.Field(i)); fv != nil {
				o = append(o, field{name, fv})
			}
		}
		if len(o) == 0 {
			return nil
		}
		return o
	case v.Kind() == reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = writtenConfig(v.Index(i))
		}
		return out
	case v.Kind() == reflect.Map:
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		o := make(object, 0, len(keys))
		for _, k := range keys {
			o = append(o, field{k.String(), writtenConfig(v.MapIndex(k))})
		}
		return o
	}
	return v.Interface()
}
