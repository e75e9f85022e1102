package ws

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
)

// Handshake errors of checkHandshake, in the order gorilla checks.
var (
	errNoConnectionUpgrade = errors.New("ws: 'upgrade' token not found in 'Connection' header")
	errNoUpgradeWebsocket  = errors.New("ws: 'websocket' token not found in 'Upgrade' header")
	errMethod              = errors.New("ws: request method is not GET")
	errVersion             = errors.New("ws: 13 not found in 'Sec-Websocket-Version' header")
	errChallengeKey        = errors.New("ws: 'Sec-WebSocket-Key' is not 16 base64-encoded bytes")
)

// checkHandshake checks what gorilla's Upgrader checks of a handshake
// before it upgrades (RFC 6455 4.2.1), and returns the status gorilla
// answers a failure with (400, or 405 for a method other than GET) and
// why; 0 and nil for a valid handshake. It runs before the policy so that
// a request gorilla would refuse anyway spends no token and holds no slot:
// otherwise ten handshakes with a bad Sec-WebSocket-Version empty a
// per-IP burst of ten for the real client behind the same address. The
// origin is not checked here (the Upgrader's CheckOrigin is the
// application's). A refusal should carry Sec-WebSocket-Version: 13, as
// gorilla's does.
func checkHandshake(r *http.Request) (int, error) {
	switch {
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return http.StatusBadRequest, errNoConnectionUpgrade
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return http.StatusBadRequest, errNoUpgradeWebsocket
	case r.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, errMethod
	case !headerHasToken(r.Header, "Sec-Websocket-Version", "13"):
		return http.StatusBadRequest, errVersion
	case !validChallengeKey(r.Header.Get("Sec-Websocket-Key")):
		return http.StatusBadRequest, errChallengeKey
	}
	return 0, nil
}

// headerHasToken reports whether a comma-separated list in any of h's name
// lines holds token (case-insensitive), as gorilla's tokenListContainsValue.
func headerHasToken(h http.Header, name, token string) bool {
	for _, line := range h[name] {
		for s := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(strings.Trim(s, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// validChallengeKey reports whether s base64-decodes to 16 bytes (RFC 6455
// 4.1: the client's nonce).
func validChallengeKey(s string) bool {
	// 16 bytes are 24 characters in standard base64; checking the length
	// first keeps a long header from costing a decode.
	if len(s) != 24 {
		return false
	}
	var b [18]byte
	n, err := base64.StdEncoding.Decode(b[:], []byte(s))
	return err == nil && n == 16
}
