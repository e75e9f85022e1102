//go:build linux

package ws

import (
	"net/netip"
	"syscall"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h). A dialer
// that binds a source address normally picks its port at bind(), where a
// port in TIME_WAIT is taken; with this option connect() picks it per
// 4-tuple instead (and may reuse loopback TIME_WAIT ports, tcp_tw_reuse=2),
// so tens of thousands of short connections from a few 127.0.0.x sources
// do not run out of ephemeral ports.
const ipBindAddressNoPort = 24

// sourceControl is the net.Dialer.Control of loopbackDialer.
func sourceControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	}); err != nil {
		return err
	}
	return serr
}

// loopbackSources returns up to n source addresses 127.0.0.1, 127.0.0.2,
// ...: Linux routes all of 127.0.0.0/8 to lo.
func loopbackSources(n int) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	for i := 1; i <= n && i < 255; i++ {
		out = append(out, netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}))
	}
	return out
}
