package policy

import (
	"math"
	"net/netip"
	"slices"

	"github.com/wslimit/wslimit/policy/listener"
)

// Listener returns the policy's listener section compiled for package
// policy/listener, and false when the policy has none (the zero Limits
// admit every connection).
func (p *Policy) Listener() (listener.Limits, bool) {
	if p.listener == nil {
		return listener.Limits{}, false
	}
	l := *p.listener
	l.Unlimited = slices.Clone(l.Unlimited)
	return l, true
}

// compileListener checks the listener section and compiles it; nil when
// the policy has none.
func compileListener(v *validator, cfg Config, trusted []netip.Prefix, auto *autoCaps) *listener.Limits {
	lc := cfg.Listener
	if lc == nil {
		return nil
	}
	global := auto.conns(v, "listener.global", lc.Global, true)
	for _, f := range []struct {
		name string
		n    int
	}{{"per_ip", lc.PerIP}, {"per_subnet", lc.PerSubnet}, {"burst", lc.Burst}} {
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
	l := &listener.Limits{
		PerIP: lc.PerIP, PerSubnet: lc.PerSubnet, Global: global,
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
