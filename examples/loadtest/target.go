package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"syscall"
)

// errNotLoopback is returned when the target is not a loopback address and
// Config.AllowNonLoopback is not set.
var errNotLoopback = errors.New("target is not a loopback address (127.0.0.0/8, ::1)")

// target is a checked WebSocket URL.
type target struct {
	url      *url.URL
	host     string // host name or address, without port
	loopback bool   // every address the host resolves to is a loopback address
}

// parseTarget checks the URL and resolves its host to decide whether it is
// loopback. A host name counts as loopback only when every address it
// resolves to is; the dialer checks each connection again (loopbackOnly),
// so a name that later resolves elsewhere is still refused.
func parseTarget(ctx context.Context, raw string) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return target{}, fmt.Errorf("-url %q: scheme must be ws or wss", raw)
	}
	host := u.Hostname()
	if host == "" {
		return target{}, fmt.Errorf("-url %q: no host", raw)
	}
	t := target{url: u, host: host}
	if a, err := netip.ParseAddr(host); err == nil {
		t.loopback = isLoopback(a)
		return t, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return target{}, fmt.Errorf("-url: resolving %q: %w", host, err)
	}
	t.loopback = len(addrs) > 0
	for _, a := range addrs {
		if !isLoopback(a) {
			t.loopback = false
		}
	}
	return t, nil
}

func isLoopback(a netip.Addr) bool {
	return a.Unmap().WithZone("").IsLoopback()
}

// loopbackOnly is a net.Dialer Control function that refuses to connect to
// anything but a loopback address. It sees the address after name
// resolution, so it holds whatever the URL's host resolves to.
func loopbackOnly(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("loopback guard: cannot parse %q: %w", address, err)
	}
	if !isLoopback(ap.Addr()) {
		return fmt.Errorf("loopback guard: refusing to connect to %s: %w", ap.Addr(), errNotLoopback)
	}
	return nil
}
