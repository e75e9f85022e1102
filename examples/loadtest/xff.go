package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// addrGen generates client addresses inside a prefix for X-Forwarded-For:
// the i-th address is the prefix plus i+1 (wrapping within the prefix), or
// a random address of the prefix.
type addrGen struct {
	prefix   netip.Prefix // masked
	hostBits int
	random   bool
}

func newAddrGen(s string, random bool) (*addrGen, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("-xff-prefix: %w", err)
	}
	if p.Addr().Zone() != "" {
		return nil, fmt.Errorf("-xff-prefix %q: zones are not allowed", s)
	}
	if p.Addr().Is4In6() {
		return nil, fmt.Errorf("-xff-prefix %q: use the IPv4 form", s)
	}
	p = p.Masked()
	return &addrGen{prefix: p, hostBits: p.Addr().BitLen() - p.Bits(), random: random}, nil
}

// size returns the number of addresses in the prefix, saturated at 1<<63.
func (g *addrGen) size() uint64 {
	if g.hostBits >= 63 {
		return 1 << 63
	}
	return 1 << g.hostBits
}

// distinct returns how many distinct addresses n sequential calls yield.
func (g *addrGen) distinct(n int) int {
	if g.random || uint64(n) <= g.size() {
		return n // random: at most n (collisions are unlikely in big prefixes)
	}
	return int(g.size())
}

// addr returns the i-th address.
func (g *addrGen) addr(i int) netip.Addr {
	var hi, lo uint64 // host part, 128 bits
	if g.random {
		hi, lo = rand.Uint64(), rand.Uint64()
	} else {
		lo = uint64(i) + 1
	}
	// Keep only the host bits.
	switch {
	case g.hostBits == 0:
		hi, lo = 0, 0
	case g.hostBits < 64:
		hi, lo = 0, lo&(1<<g.hostBits-1)
	case g.hostBits < 128:
		hi &= 1<<(g.hostBits-64) - 1
	}
	base := g.prefix.Addr()
	if base.Is4() {
		b := base.As4()
		v := binary.BigEndian.Uint32(b[:]) | uint32(lo)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(b[:8])|hi)
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])|lo)
	return netip.AddrFrom16(b)
}
