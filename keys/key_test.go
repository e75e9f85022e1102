package keys

import (
	"hash/maphash"
	"net/netip"
	"testing"
)

func TestSubnetAggregation(t *testing.T) {
	for _, tc := range []struct {
		name           string
		a, b           string
		v4bits, v6bits int
		same           bool
		want           string // Subnet(a).String()
	}{
		{"IPv6 same /64", "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", 24, 64, true, "2001:db8:1:2::/64"},
		{"IPv6 different /64", "2001:db8:1:2::1", "2001:db8:1:3::1", 24, 64, false, "2001:db8:1:2::/64"},
		{"IPv6 same /56, different /64", "2001:db8:1:2::1", "2001:db8:1:ff::1", 24, 56, true, "2001:db8:1::/56"},
		{"IPv6 different /56", "2001:db8:1:100::1", "2001:db8:1:200::1", 24, 56, false, "2001:db8:1:100::/56"},
		{"IPv4 same /24", "192.0.2.1", "192.0.2.254", 24, 64, true, "192.0.2.0/24"},
		{"IPv4 different /24", "192.0.2.1", "192.0.3.1", 24, 64, false, "192.0.2.0/24"},
		{"mapped aggregates as IPv4", "::ffff:192.0.2.1", "192.0.2.200", 24, 64, true, "192.0.2.0/24"},
		{"mapped different /24", "::ffff:192.0.2.1", "::ffff:192.0.3.1", 24, 64, false, "192.0.2.0/24"},
		{"zone dropped", "fe80::1%eth0", "fe80::2%eth1", 24, 64, true, "fe80::/64"},
		{"IPv4 /32", "192.0.2.1", "192.0.2.2", 32, 64, false, "192.0.2.1/32"},
		{"IPv6 /128", "2001:db8::1", "2001:db8::1", 24, 128, true, "2001:db8::1/128"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ka := Subnet(netip.MustParseAddr(tc.a), tc.v4bits, tc.v6bits)
			kb := Subnet(netip.MustParseAddr(tc.b), tc.v4bits, tc.v6bits)
			if got := ka == kb; got != tc.same {
				t.Errorf("Subnet(%s) == Subnet(%s) is %v, want %v (%v, %v)", tc.a, tc.b, got, tc.same, ka, kb)
			}
			if got := ka.String(); got != tc.want {
				t.Errorf("Subnet(%s).String() = %q, want %q", tc.a, got, tc.want)
			}
			if ka.Kind != KindSubnet {
				t.Errorf("Subnet(%s).Kind = %v, want KindSubnet", tc.a, ka.Kind)
			}
			seed := maphash.MakeSeed()
			if got := ka.Hash(seed) == kb.Hash(seed); tc.same && !got {
				t.Errorf("equal keys hash differently")
			}
		})
	}
}

func TestIPKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b string
		same bool
		want string
	}{
		{"same IPv4", "192.0.2.1", "192.0.2.1", true, "192.0.2.1"},
		{"different IPv4", "192.0.2.1", "192.0.2.2", false, "192.0.2.1"},
		{"mapped equals IPv4", "::ffff:192.0.2.1", "192.0.2.1", true, "192.0.2.1"},
		{"zone dropped", "fe80::1%eth0", "fe80::1", true, "fe80::1"},
		{"IPv6 same /64 still different", "2001:db8::1", "2001:db8::2", false, "2001:db8::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ka, kb := IP(netip.MustParseAddr(tc.a)), IP(netip.MustParseAddr(tc.b))
			if got := ka == kb; got != tc.same {
				t.Errorf("IP(%s) == IP(%s) is %v, want %v", tc.a, tc.b, got, tc.same)
			}
			if got := ka.String(); got != tc.want {
				t.Errorf("IP(%s).String() = %q, want %q", tc.a, got, tc.want)
			}
		})
	}
}

// TestSubnetBadBits guards the documented fallback: out-of-range prefix
// lengths give the whole address rather than a panic.
func TestSubnetBadBits(t *testing.T) {
	a := netip.MustParseAddr("2001:db8::1")
	for _, bits := range []int{-1, 129, 1000} {
		if got, want := Subnet(a, 24, bits).String(), "2001:db8::1/128"; got != want {
			t.Errorf("Subnet(%v, 24, %d) = %q, want %q", a, bits, got, want)
		}
	}
}
