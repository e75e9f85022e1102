//go:build !linux

package ws

import (
	"net/netip"
	"syscall"
)

// sourceControl is nil: only Linux gets IP_BIND_ADDRESS_NO_PORT.
var sourceControl func(network, address string, c syscall.RawConn) error

// loopbackSources returns 127.0.0.1 only: other systems do not all route
// the rest of 127.0.0.0/8 to the loopback interface.
func loopbackSources(int) []netip.Addr {
	return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}
}
