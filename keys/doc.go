// Package keys turns an HTTP request into the keys that rate-limiting rules
// count by.
//
// # Overview
//
// A Key is a small comparable value: one client address (IP), a CIDR block
// of addresses (Subnet), an opaque string such as a header value, a verified
// JWT claim or a session cookie (String, HeaderValue), or the one key shared
// by every request (Global). Keys are built by pure functions of the request
// and hold no state; counting is the business of the packages that use them.
//
// Addresses are normalised before they become keys (Normalize): an
// IPv4-mapped IPv6 address (::ffff:192.0.2.1) is folded to IPv4 and an IPv6
// zone (%eth0) is dropped, so one client has one key. Subnet aggregates
// IPv6 by prefix (/64 or /56 are usual: a single IPv6 user commonly holds a
// whole /64 or more) and IPv4 by its own prefix length.
//
// HeaderValue keys by a request header. Such a value is the client's word:
// anyone can send any value, and a fresh value is a fresh key. Rely on it
// only where something in front of the server sets or verifies the header.
// Values longer than MaxHeaderKeyLen are replaced by a fixed-size digest.
//
// # Client IP
//
// ClientIP decides which address a request comes from. The address of the
// TCP peer (http.Request.RemoteAddr) cannot be forged; forwarding headers
// (X-Forwarded-For, Forwarded, X-Real-IP) can be written by anyone. So a
// forwarding header counts only when the peer is a configured trusted proxy,
// and it is read from the right: each trusted proxy appends the address of
// its own peer, so the right-most entries are the trusted ones, and
// everything left of the first untrusted address was written by the client
// or by proxies nobody vouched for. The right-most untrusted address is the
// client. Reading the left-most entry instead, as many limiters once did,
// lets every client choose its own key by sending the header itself.
//
// If the walk meets an entry it cannot parse ("unknown", an obfuscated
// identifier, garbage) it stops and takes the last trusted hop it reached: a
// trusted proxy wrote that entry, so it did not know its peer, and nothing to
// the left of it can be believed. Stopping may put the clients of one proxy
// under one key; it never lets a client choose its key.
//
// The work is bounded whatever the header: at most MaxForwardedEntries
// entries and MaxForwardedBytes bytes are examined, counted from the right
// end, and reaching a bound stops the walk like garbage does. Long chains of
// trusted proxies are therefore supported up to MaxForwardedEntries hops.
//
// # Concurrency
//
// Every function in this package is pure: it reads its arguments (the request
// is not modified) and keeps no global mutable state. A ClientIP is immutable
// once NewClientIP returns it and is safe for concurrent use by any number
// of goroutines. Key values are comparable and can be copied and shared
// freely.
package keys
