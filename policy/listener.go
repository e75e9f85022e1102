package policy

import "math"

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

// validateListener checks the listener section and fills its defaults in
// lc, the policy's own copy.
func validateListener(v *validator, lc *ListenerConfig) {
	if lc == nil {
		return
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
	if lc.IPv4Prefix == 0 {
		lc.IPv4Prefix = DefaultIPv4Prefix
	}
	if lc.IPv6Prefix == 0 {
		lc.IPv6Prefix = DefaultIPv6Prefix
	}
	if lc.IPv4Prefix < 1 || lc.IPv4Prefix > 32 {
		v.add("listener.ipv4_prefix", "must be between 1 and 32 (got %d)", lc.IPv4Prefix)
	}
	if lc.IPv6Prefix < 1 || lc.IPv6Prefix > 128 {
		v.add("listener.ipv6_prefix", "must be between 1 and 128 (got %d)", lc.IPv6Prefix)
	}
	if lc.Rate == "" {
		if lc.Burst != 0 {
			v.add("listener.burst", "burst has no effect without rate")
		}
		return
	}
	lim, err := ParseRate(lc.Rate)
	if err != nil {
		v.add("listener.rate", "%v", err)
		return
	}
	if lc.Burst == 0 {
		lc.Burst = max(1, int(math.Ceil(float64(lim))))
	}
}
