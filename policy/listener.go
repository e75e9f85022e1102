package policy

import (
	"math"
	"net/netip"
	"slices"

	"golang.org/x/time/rate"
)

// ListenerConfig caps raw TCP connections when they are accepted, before
// any HTTP is read: every connection counts, WebSocket or not, idle
// keep-alive or half-sent request, until it is closed. Package
// policy/listener applies it to a net.Listener. The caps count the TCP
// peer's address: behind a proxy that is the proxy, so connections from
// client_ip.trusted_proxies (and from exempt blocks) skip per_ip and
// per_subnet; they still count under global, the ceiling that protects
// the process's file descriptors.
type ListenerConfig struct {
	// PerIP caps open connections per peer address; 0 means no cap.
	PerIP int `yaml:"per_ip" json:"per_ip,omitempty"`
	// PerSubnet caps open connections per peer subnet (IPv4Prefix,
	// IPv6Prefix); 0 means no cap.
	PerSubnet int `yaml:"per_subnet" json:"per_subnet,omitempty"`
	// IPv4Prefix is the subnet prefix length for IPv4 peers (default 24).
	IPv4Prefix int `yaml:"ipv4_prefix" json:"ipv4_prefix,omitempty"`
	// IPv6Prefix is the subnet prefix length for IPv6 peers (default 64).
	IPv6Prefix int `yaml:"ipv6_prefix" json:"ipv6_prefix,omitempty"`
	// Global caps open connections in all; 0 means no cap.
	Global int `yaml:"global" json:"global,omitempty"`
	// Rate bounds accepted connections, all peers together: "200/s";
	// empty means no rate limit. A connection over it is closed at once.
	Rate string `yaml:"rate" json:"rate,omitempty"`
	// Burst is the accept bucket's size; default max(1, ceil(rate per
	// second)).
	Burst int `yaml:"burst" json:"burst,omitempty"`
}

// ListenerLimits is a policy's listener section as package policy/listener
// applies it: defaults filled in, the rate parsed, and the blocks whose
// peers skip the per-address caps (client_ip.trusted_proxies and exempt).
type ListenerLimits struct {
	PerIP, PerSubnet, Global int
	IPv4Prefix, IPv6Prefix   int
	// Rate is accepted connections per second, all peers; 0 means none.
	Rate  rate.Limit
	Burst int
	// Unlimited are the blocks whose peers skip per_ip and per_subnet.
	Unlimited []netip.Prefix
}

// Listener returns the compiled listener section, and false when the
// policy has none.
func (p *Policy) Listener() (ListenerLimits, bool) {
	if p.listener == nil {
		return ListenerLimits{}, false
	}
	l := *p.listener
	l.Unlimited = slices.Clone(l.Unlimited)
	return l, true
}

// compileListener checks the listener section and compiles it; nil when
// the policy has none.
func compileListener(v *validator, cfg Config, trusted []netip.Prefix) *ListenerLimits {
	lc := cfg.Listener
	if lc == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"per_ip", lc.PerIP}, {"per_subnet", lc.PerSubnet}, {"global", lc.Global}, {"burst", lc.Burst}} {
		if f.n < 0 {
			v.add("listener."+f.name, "must not be negative (got %d)", f.n)
		}
	}
	if lc.PerIP == 0 && lc.PerSubnet == 0 && lc.Global == 0 && lc.Rate == "" {
		v.add("listener", "sets no limit: give per_ip, per_subnet, global or rate, or leave the section out")
	}
	if (lc.IPv4Prefix != 0 || lc.IPv6Prefix != 0) && lc.PerSubnet == 0 {
		v.add("listener.ipv4_prefix", "subnet prefixes have no effect without per_subnet")
	}
	l := &ListenerLimits{
		PerIP: lc.PerIP, PerSubnet: lc.PerSubnet, Global: lc.Global,
		IPv4Prefix: orDefault(lc.IPv4Prefix, defaultIPv4Prefix),
		IPv6Prefix: orDefault(lc.IPv6Prefix, defaultIPv6Prefix),
		Unlimited:  append(slices.Clone(trusted), parsePrefixes(&validator{}, "exempt", cfg.Exempt)...),
	}
	if l.IPv4Prefix < 1 || l.IPv4Prefix > 32 {
		v.add("listener.ipv4_prefix", "must be between 1 and 32 (got %d)", l.IPv4Prefix)
	}
	if l.IPv6Prefix < 1 || l.IPv6Prefix > 128 {
		v.add("listener.ipv6_prefix", "must be between 1 and 128 (got %d)", l.IPv6Prefix)
	}
	if lc.Rate == "" {
		if lc.Burst != 0 {
			v.add("listener.burst", "burst has no effect without rate")
		}
		return l
	}
	lim, err := parseRate(lc.Rate)
	if err != nil {
		v.add("listener.rate", "%v", err)
		return l
	}
	l.Rate, l.Burst = lim, lc.Burst
	if l.Burst == 0 {
		l.Burst = max(1, int(math.Ceil(float64(lim))))
	}
	return l
}
