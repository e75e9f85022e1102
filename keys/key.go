package keys

import (
	"hash/maphash"
	"net/netip"
)

// Kind says which dimension a Key was taken from.
type Kind uint8

// The kinds of key.
const (
	KindGlobal Kind = iota // one key shared by every request
	KindIP                 // one client address
	KindSubnet             // a CIDR block of client addresses
	KindString             // an opaque string: header value, JWT claim, cookie
)

// Key is the identity a rule counts by. It is a small comparable value, so
// it can be used directly as a map key without allocation: IP and subnet keys
// carry a netip.Prefix, string keys carry the string, the global key is the
// zero value.
type Key struct {
	Kind   Kind
	Prefix netip.Prefix // KindIP (full-length prefix) and KindSubnet
	Str    string       // KindString
}

// Global returns the single key shared by every request.
func Global() Key { return Key{} }

// IP returns the key of one client address. The address is normalised
// first (see Normalize), so an IPv4-mapped IPv6 address and its IPv4 form
// give the same key.
func IP(a netip.Addr) Key {
	a = Normalize(a)
	return Key{Kind: KindIP, Prefix: netip.PrefixFrom(a, a.BitLen())}
}

// Subnet returns the key of the block that holds a: its IPv4 prefix of v4bits
// or its IPv6 prefix of v6bits bits. The address is normalised first (see
// Normalize): an IPv4-mapped IPv6 address aggregates as IPv4, by v4bits.
func Subnet(a netip.Addr, v4bits, v6bits int) Key {
	a = Normalize(a)
	bits := v6bits
	if a.Is4() {
		bits = v4bits
	}
	p, err := a.Prefix(bits)
	if err != nil {
		// Out-of-range bits are rejected when a policy is built; fall back
		// to the whole address rather than panic.
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return Key{Kind: KindSubnet, Prefix: p}
}

// String returns a key from an opaque string value.
func String(s string) Key { return Key{Kind: KindString, Str: s} }

// String renders the key for logs and for external stores: "global", an
// address, a CIDR, or "s:" followed by the string value.
func (k Key) String() string {
	switch k.Kind {
	case KindIP:
		return k.Prefix.Addr().String()
	case KindSubnet:
		return k.Prefix.String()
	case KindString:
		return "s:" + k.Str
	default:
		return "global"
	}
}

// Hash returns a hash of k under seed, for sharding connection counters.
// Keys that differ in kind, address, prefix length or string
// hash differently (up to 64-bit collisions). It does not allocate.
func (k Key) Hash(seed maphash.Seed) uint64 {
	var buf [18]byte
	buf[0] = byte(k.Kind)
	a := k.Prefix.Addr().As16()
	copy(buf[1:17], a[:])
	buf[17] = byte(k.Prefix.Bits())
	h := maphash.Bytes(seed, buf[:])
	if k.Str != "" {
		// Mix the string's own hash in; the multiplication keeps the
		// combination from being symmetric.
		h = h*0x9e3779b97f4a7c15 ^ maphash.String(seed, k.Str)
	}
	return h
}
