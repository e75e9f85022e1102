package listener

import (
	"net/netip"
	"testing"
)

// TestEntriesOnlyWhileHeld: per-address and per-subnet counters exist only
// while a connection holds them, so a flood of addresses cannot grow them.
func TestEntriesOnlyWhileHeld(t *testing.T) {
	l := &Listener{perIP: map[netip.Addr]int{}, perNet: map[netip.Prefix]int{}, refused: map[string]uint64{}}
	l.SetLimits(Limits{PerIP: 2, PerSubnet: 4, IPv4Prefix: 24, IPv6Prefix: 64})
	var held []*slot
	for _, a := range []string{"10.0.0.1", "10.0.0.1", "10.0.1.2", "2001:db8::1"} {
		s, reason := l.admit(netip.MustParseAddr(a))
		if reason != "" {
			t.Fatalf("%s refused: %s", a, reason)
		}
		held = append(held, s)
	}
	if len(l.perIP) != 3 || len(l.perNet) != 3 || l.live != 4 {
		t.Fatalf("%d addresses, %d subnets, %d live; want 3, 3, 4", len(l.perIP), len(l.perNet), l.live)
	}
	for _, s := range held {
		s.release()
		s.release() // once only
	}
	if len(l.perIP) != 0 || len(l.perNet) != 0 || l.live != 0 {
		t.Fatalf("after release: %d addresses, %d subnets, %d live; want none", len(l.perIP), len(l.perNet), l.live)
	}
}
