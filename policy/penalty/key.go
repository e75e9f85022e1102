package penalty

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/wslimit/wslimit/keys"
)

// ParseKey parses a key as keys.Key.String renders it: an address
// ("192.0.2.7", an ip key), a CIDR block ("192.0.2.0/24", a subnet key) or
// "s:" and a string (header, JWT and cookie keys). The global key cannot
// be banned.
func ParseKey(s string) (keys.Key, error) {
	if v, ok := strings.CutPrefix(s, "s:"); ok {
		if v == "" {
			return keys.Key{}, fmt.Errorf("penalty: empty string key %q", s)
		}
		return keys.String(v), nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			return keys.Key{}, fmt.Errorf("penalty: %q is not a masked CIDR block", s)
		}
		return keys.Subnet(p.Addr(), p.Bits(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return keys.Key{}, fmt.Errorf("penalty: %q is not an address, a CIDR block or s:STRING", s)
	}
	return keys.IP(a.WithZone("")), nil
}
