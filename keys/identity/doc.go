// Package identity turns the credentials of a WebSocket handshake into keys
// that rate-limit rules count by: the subject (or another string claim) of a
// verified JSON Web Token, and a session cookie.
//
// # Overview
//
// [JWT] verifies tokens with github.com/golang-jwt/jwt/v5. Build it from a
// [JWTConfig] (the identity.jwt section of a policy file) with [NewJWT], or
// with keys in hand with [NewJWTWithKeys]. [JWT.Identify] looks for a token
// in the configured sources, in order, and takes the first one found:
//
//	header:Authorization   Authorization: Bearer <token>
//	query:NAME             ?NAME=<token>
//	cookie:NAME            Cookie: NAME=<token>
//	subprotocol[:PREFIX]   Sec-WebSocket-Protocol: chat, bearer.<token>
//
// Browsers cannot set headers on a WebSocket, so browser clients use the
// subprotocol, a cookie or the query. The subprotocol source expects the
// page to open new WebSocket(url, ["chat", "bearer." + token]); the guard
// removes the token entry with [JWT.TokenFreeProtocols] (or
// [StripTokenProtocols]) before the upgrader picks a subprotocol, so the
// token is never echoed, and the application must still offer a real
// subprotocol such as "chat", because a browser fails a handshake in which
// it asked for subprotocols and got none.
//
// The result is an [Identity] (the key claim as Subject, the expiry, the
// source, and the token's string claims through [Identity.Claim], for
// tiers), [ErrNoToken] when no source carries a token, or an error wrapping
// [ErrInvalidToken] when the token does not verify. A rule treats both
// errors as a missing identity; an invalid token is worth a log line.
//
// [Cookie] keys requests by a session cookie, optionally checked by a Verify
// hook such as [HMACCookieVerifier].
//
// Verified tokens are remembered in a bounded LRU (CacheSize entries,
// default 10000) keyed by the SHA-256 of the token, never the token itself,
// so that a client reconnecting in a loop pays one signature verification
// per token rather than one per handshake. An entry is used only inside the
// window in which the token itself verifies: nbf-leeway <= now <
// exp+leeway. Invalid tokens are not cached at all; repeating one costs a
// parse and at most one signature check each time, which an IP rule bounds.
//
// # Security
//
// A token yields an identity only when all of these hold:
//
//   - it is at most MaxTokenBytes long (default 4096), checked before any
//     parsing, and is a well-formed compact JWS with strict base64url;
//   - its alg is in the configured allow-list. "none" can never be allowed,
//     and an allow-list cannot mix HMAC (HS*) with public-key algorithms, so
//     a public key can never be used as an HMAC secret (key confusion);
//     a key is also only used with algorithms of its own type and curve;
//   - its kid selects a configured key and its signature verifies with that
//     key. A kid the key set holds selects that key; otherwise the default
//     key is used: the key without kid (the PEM key or the secret, or a JWK
//     without kid), or, for a token without kid, the only key of the set.
//     Any other token is refused. Keys named in the token (jku, jwk, x5u,
//     x5c) are never fetched or used, and a token with a crit header is
//     refused;
//   - exp is present and now < exp+Leeway; when present, nbf <= now+Leeway;
//   - iss equals Issuer and aud contains Audience, when these are set;
//   - the key claim (Claim, default sub) is present, a string, and not
//     empty.
//
// Session cookies are not verified unless [Cookie.Verify] is set. An
// unverified cookie is whatever the client sent: an attacker can mint a new
// value for every handshake, so a rule keyed by it limits nobody on its own
// and must be combined with an IP or subnet rule. A verified cookie is only
// as good as its verifier's secret.
//
// Tokens and cookie values are credentials. Never log them: the errors of
// this package never contain a token, so they may be logged. A token in a
// query string ends up in access logs, proxy logs and browser history;
// prefer the subprotocol or a cookie. Keys made from cookies longer than
// MaxCookieKeyBytes are hashed; shorter raw cookie values do become keys
// (and reach the configured store), which is another reason to set Verify
// and key by the id it returns.
//
// Malformed headers, cookies and tokens yield no identity and never panic.
// Only the first 64 KiB of Cookie headers are read.
//
// # Concurrency
//
// A [JWT] is safe for concurrent use by multiple goroutines: its
// configuration is fixed when it is built, and its token cache is sharded
// behind mutexes. A [Cookie] is safe for concurrent use if its Verify
// function is; the functions returned by [HMACCookieVerifier] are. The
// package holds no global mutable state, and time is always a parameter.
package identity
