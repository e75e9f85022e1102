package identity

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wslimit/wslimit/keys"
)

// Defaults applied by [NewJWT] and [NewJWTWithKeys] to zero fields of a
// [JWTConfig].
const (
	DefaultClaim         = "sub"                  // the claim that becomes the key
	DefaultCacheSize     = 10000                  // verified tokens remembered
	DefaultMaxTokenBytes = 4096                   // longest token parsed
	DefaultSource        = "header:Authorization" // where tokens are looked for
)

// ErrNoToken is returned by [JWT.Identify] when none of the configured
// sources carries a token. It is the ordinary case of an anonymous client,
// not an attack.
var ErrNoToken = errors.New("identity: no token")

// ErrInvalidToken is wrapped by every error of [JWT.Identify] and
// [JWT.Verify] about a token that was present but did not verify. The cause
// is wrapped as well, so errors.Is also matches the sentinels of
// github.com/golang-jwt/jwt/v5 (jwt.ErrTokenExpired, jwt.ErrTokenSignatureInvalid,
// ...). The error text never contains the token, so it may be logged.
var ErrInvalidToken = errors.New("identity: invalid token")

// Causes wrapped next to ErrInvalidToken by this package.
var (
	errTooLarge     = errors.New("token too large")
	errCrit         = errors.New("token has a crit header; no JWS extensions are supported")
	errKIDType      = errors.New("kid header is not a string")
	errUnknownKID   = errors.New("no key for the token's kid")
	errKeyMismatch  = errors.New("key cannot verify the token's alg")
	errAlgNotAllow  = errors.New("alg not allowed")
	errClaimMissing = errors.New("claim missing")
	errClaimType    = errors.New("claim is not a string")
	errClaimEmpty   = errors.New("claim is empty")
)

// JWTConfig configures a [JWT] verifier. It is the `identity.jwt` section of
// a policy file; the yaml tags are the field names there. The zero value is
// not usable: Algorithms and a key are required.
type JWTConfig struct {
	// From lists the places a token is looked for, in order; the first
	// place that carries a token wins (see [JWT.Identify]). Each entry is
	// one of
	//
	//	header:Authorization   the Bearer scheme (case-insensitive)
	//	header:NAME            the header's value (a "Bearer " scheme prefix is stripped)
	//	query:NAME             a query parameter (ends up in access logs: avoid)
	//	cookie:NAME            a cookie
	//	subprotocol            a Sec-WebSocket-Protocol entry "bearer.<token>"
	//	subprotocol:PREFIX     a Sec-WebSocket-Protocol entry "PREFIX<token>"
	//
	// An Authorization header with another scheme (Basic, ...) carries no
	// token. Of repeated headers, query parameters and cookies the first
	// counts; subprotocol prefixes are case-sensitive, and every
	// Sec-WebSocket-Protocol line is searched. Empty means [DefaultSource].
	From []string `yaml:"from" json:"from,omitempty"`

	// Algorithms is the allow-list of JWS algorithms (HS256, HS384,
	// HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
	// ES512, EdDSA). It is required. "none" is refused, and so is a list
	// that mixes HMAC (HS*) with public-key algorithms: a verifier is
	// either symmetric or asymmetric, which makes key confusion
	// impossible.
	Algorithms []string `yaml:"algorithms" json:"algorithms,omitempty"`

	// KeyFile is a PEM file with one public key (PUBLIC KEY, RSA PUBLIC
	// KEY or CERTIFICATE block; RSA of at least 2048 bits, ECDSA P-256,
	// P-384 or P-521, or Ed25519), or a JWKS JSON file ({"keys": [...]})
	// whose keys are selected by the token's kid. Keys of a JWKS that no
	// allowed algorithm can use, whose "use" is not "sig", or whose "alg"
	// is not allowed are skipped; a JWK's "alg" pins the key to that
	// algorithm. With HS* algorithms only a JWKS of "oct" keys fits.
	KeyFile string `yaml:"key_file" json:"key_file,omitempty"`

	// SecretEnv names an environment variable that holds the HMAC secret.
	// Only with HS* algorithms. The secret must be at least as long as the
	// largest allowed hash (32 bytes for HS256, 48 for HS384, 64 for
	// HS512), per RFC 7518 section 3.2.
	SecretEnv string `yaml:"secret_env" json:"secret_env,omitempty"`

	// SecretFile is a file that holds the HMAC secret, used as raw bytes
	// with trailing CR and LF removed. Only with HS* algorithms.
	SecretFile string `yaml:"secret_file" json:"secret_file,omitempty"`

	// Issuer, when set, must equal the token's iss claim.
	Issuer string `yaml:"issuer" json:"issuer,omitempty"`

	// Audience, when set, must be one of the token's aud values.
	Audience string `yaml:"audience" json:"audience,omitempty"`

	// Leeway is the clock skew tolerated on exp and nbf. Must not be
	// negative.
	Leeway time.Duration `yaml:"leeway" json:"leeway,omitempty"`

	// Claim names the claim whose value becomes the key; it must be a
	// non-empty string in the token. Empty means [DefaultClaim] ("sub").
	Claim string `yaml:"claim" json:"claim,omitempty"`

	// CacheSize is the number of verified tokens remembered, so that a
	// reconnecting client does not pay a signature verification each
	// time. Zero means [DefaultCacheSize]; negative disables the cache.
	// From 1024 entries on, the cache is split into 16 shards of
	// CacheSize/16 entries, each evicting its least recently used entry.
	CacheSize int `yaml:"cache_size" json:"cache_size,omitempty"`

	// MaxTokenBytes bounds the length of a token; longer tokens are
	// rejected before any parsing. Zero means [DefaultMaxTokenBytes].
	MaxTokenBytes int `yaml:"max_token_bytes" json:"max_token_bytes,omitempty"`
}

// Identity is what a verified token says about its bearer. Identities
// returned for the same cached token share their claims; treat them as
// read-only values.
type Identity struct {
	// Subject is the value of the configured key claim (by default sub).
	Subject string
	// Expires is the token's exp claim.
	Expires time.Time
	// Source is the configured source the token came from, in canonical
	// form ("header:Authorization", "query:access_token",
	// "cookie:token", "subprotocol:bearer."); empty for [JWT.Verify].
	Source string

	claims map[string]string // top-level string claims; shared, never mutated
}

// Claim returns the value of a top-level string claim of the token, such as
// one that selects a tier ("plan"). It reports false when the claim is
// absent or not a string.
func (id Identity) Claim(name string) (string, bool) {
	v, ok := id.claims[name]
	return v, ok
}

// Key returns the key a rule counts by: [keys.BoundedString] of the Subject.
func (id Identity) Key() keys.Key { return keys.BoundedString(id.Subject) }

// JWT verifies JSON Web Tokens found in a request and turns them into an
// [Identity]. Build one with [NewJWT] or [NewJWTWithKeys]. A JWT is safe for
// concurrent use; its configuration is fixed at construction.
type JWT struct {
	claim    string
	sources  []source
	prefixes []string // subprotocol prefixes, for TokenFreeProtocols
	algs     []string
	keys     map[string]verifyKey
	leeway   time.Duration
	maxBytes int
	opts     []jwt.ParserOption // without the time function
	cache    *tokenCache        // nil when disabled

	// verifications counts keys handed to the signature check; tests use
	// it to tell a cache hit from a verification.
	verifications atomic.Uint64
}

// NewJWT builds a verifier from cfg, loading the key from cfg.KeyFile,
// cfg.SecretEnv or cfg.SecretFile (exactly one must be set). Errors name the
// offending field; they never contain secret material.
func NewJWT(cfg JWTConfig) (*JWT, error) {
	algs, symmetric, err := checkAlgorithms(cfg.Algorithms)
	if err != nil {
		return nil, err
	}
	ks, err := loadKeys(cfg, algs, symmetric)
	if err != nil {
		return nil, err
	}
	return newJWT(cfg, algs, ks)
}

// NewJWTWithKeys builds a verifier from cfg with keys given directly, for Go
// programs and tests; cfg.KeyFile, cfg.SecretEnv and cfg.SecretFile must be
// empty. The map goes from kid to key. A key under the kid "" is the default
// key, used for tokens whose kid is absent or not in the map; without one, a
// token without kid uses the map's only key, if it has exactly one. A key is an
// *rsa.PublicKey, an *ecdsa.PublicKey, an ed25519.PublicKey (for the
// asymmetric algorithms) or a []byte HMAC secret (for HS*); private keys are
// refused. Every key must be usable by one of cfg.Algorithms. Keys are
// copied; the map is not retained.
func NewJWTWithKeys(cfg JWTConfig, keyset map[string]any) (*JWT, error) {
	if cfg.KeyFile != "" || cfg.SecretEnv != "" || cfg.SecretFile != "" {
		return nil, errors.New("identity: NewJWTWithKeys: key_file, secret_env and secret_file must be empty")
	}
	algs, _, err := checkAlgorithms(cfg.Algorithms)
	if err != nil {
		return nil, err
	}
	ks, err := checkKeys(keyset, algs)
	if err != nil {
		return nil, err
	}
	return newJWT(cfg, algs, ks)
}

func newJWT(cfg JWTConfig, algs []string, ks map[string]verifyKey) (*JWT, error) {
	j := &JWT{
		claim:    cfg.Claim,
		algs:     algs,
		keys:     ks,
		leeway:   cfg.Leeway,
		maxBytes: cfg.MaxTokenBytes,
	}
	if j.claim == "" {
		j.claim = DefaultClaim
	}
	if j.leeway < 0 {
		return nil, fmt.Errorf("identity: leeway %v must not be negative", cfg.Leeway)
	}
	switch {
	case j.maxBytes == 0:
		j.maxBytes = DefaultMaxTokenBytes
	case j.maxBytes < 0:
		return nil, fmt.Errorf("identity: max_token_bytes %d must not be negative", cfg.MaxTokenBytes)
	}
	from := cfg.From
	if len(from) == 0 {
		from = []string{DefaultSource}
	}
	seen := make(map[string]bool, len(from))
	for i, spec := range from {
		s, err := parseSource(spec)
		if err != nil {
			return nil, fmt.Errorf("identity: from[%d]: %w", i, err)
		}
		if seen[s.spec] {
			return nil, fmt.Errorf("identity: from[%d]: duplicate source %q", i, s.spec)
		}
		seen[s.spec] = true
		j.sources = append(j.sources, s)
		if s.kind == sourceSubprotocol {
			j.prefixes = append(j.prefixes, s.name)
		}
	}
	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	if size > 0 {
		j.cache = newTokenCache(size)
	}
	j.opts = []jwt.ParserOption{
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(j.leeway),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		j.opts = append(j.opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		j.opts = append(j.opts, jwt.WithAudience(cfg.Audience))
	}
	return j, nil
}

// Identify looks for a token in r's configured sources, in order, and
// verifies the first one found. A later source is never consulted once an
// earlier one carries a token, even if that token is invalid: a client
// cannot rescue a bad token, or pick among several, by sending more.
//
// It returns [ErrNoToken] when no source carries a token, and an error
// wrapping [ErrInvalidToken] when the token does not verify: bad signature,
// alg not allowed, unknown kid, exp missing or passed (with leeway), nbf in
// the future, wrong iss or aud, key claim missing, not a string or empty,
// oversized or malformed. The token is checked at now.
func (j *JWT) Identify(r *http.Request, now time.Time) (Identity, error) {
	if r == nil {
		return Identity{}, ErrNoToken
	}
	for i := range j.sources {
		s := &j.sources[i]
		if tok, ok := s.extract(r, j.maxBytes); ok {
			return j.verify(tok, s.spec, now)
		}
	}
	return Identity{}, ErrNoToken
}

// Verify checks a token string as [JWT.Identify] checks the token it finds;
// the returned Identity has an empty Source. An empty token yields
// [ErrNoToken].
func (j *JWT) Verify(token string, now time.Time) (Identity, error) {
	return j.verify(token, "", now)
}

// TokenFreeProtocols returns h's Sec-WebSocket-Protocol lines without the
// entries that carry a token for one of this verifier's subprotocol
// sources: the offer to hand a WebSocket upgrader, so that a token is never
// selected and echoed as the connection's subprotocol. It returns nil when
// h holds no such entry (the offer stands as it is), and otherwise a
// non-nil slice, empty when no entry remains. h is not modified. See the
// package function [StripTokenProtocols].
func (j *JWT) TokenFreeProtocols(h http.Header) []string {
	if len(j.prefixes) == 0 {
		return nil
	}
	kept, _ := stripProtocols(h[protocolHeader], j.prefixes)
	return kept
}

func (j *JWT) verify(token, src string, now time.Time) (Identity, error) {
	if token == "" {
		return Identity{}, ErrNoToken
	}
	if len(token) > j.maxBytes {
		return Identity{}, fmt.Errorf("%w: %w: over %d bytes", ErrInvalidToken, errTooLarge, j.maxBytes)
	}
	var sum [sha256.Size]byte
	if j.cache != nil {
		sum = tokenSum(token)
		if id, ok := j.cache.get(sum, now); ok {
			id.Source = src
			return id, nil
		}
	}
	id, e, err := j.parse(token, now)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if j.cache != nil {
		j.cache.add(sum, e)
	}
	id.Source = src
	return id, nil
}

// parse verifies token at now and returns its identity with the cache entry
// that remembers it.
func (j *JWT) parse(token string, now time.Time) (Identity, cacheEntry, error) {
	opts := append(j.opts[:len(j.opts):len(j.opts)], jwt.WithTimeFunc(func() time.Time { return now }))
	claims := jwt.MapClaims{}
	if _, err := jwt.NewParser(opts...).ParseWithClaims(token, claims, j.keyFunc); err != nil {
		return Identity{}, cacheEntry{}, err
	}
	v, ok := claims[j.claim]
	if !ok {
		return Identity{}, cacheEntry{}, fmt.Errorf("%w: %q", errClaimMissing, j.claim)
	}
	sub, ok := v.(string)
	if !ok {
		return Identity{}, cacheEntry{}, fmt.Errorf("%w: %q", errClaimType, j.claim)
	}
	if sub == "" {
		return Identity{}, cacheEntry{}, fmt.Errorf("%w: %q", errClaimEmpty, j.claim)
	}
	// Validation required exp and checked exp and nbf; read them back.
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return Identity{}, cacheEntry{}, jwt.ErrTokenRequiredClaimMissing
	}
	e := cacheEntry{deadline: exp.Add(j.leeway)}
	if nbf, err := claims.GetNotBefore(); err == nil && nbf != nil {
		e.notBefore = nbf.Add(-j.leeway)
	}
	strs := make(map[string]string, len(claims))
	for k, v := range claims {
		if s, ok := v.(string); ok {
			strs[k] = s
		}
	}
	e.id = Identity{Subject: sub, Expires: exp.Time, claims: strs}
	return e.id, e, nil
}

// keyFunc picks the verification key for a parsed, not yet verified token.
func (j *JWT) keyFunc(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errCrit
	}
	alg := t.Method.Alg()
	if !slices.Contains(j.algs, alg) { // the parser checked already; be sure
		return nil, errAlgNotAllow
	}
	kid := ""
	raw, hasKID := t.Header["kid"]
	if hasKID {
		s, ok := raw.(string)
		if !ok {
			return nil, errKIDType
		}
		kid = s
	}
	k, ok := j.keys[kid]
	if !ok {
		k, ok = j.keys[""]
	}
	if !ok && !hasKID && len(j.keys) == 1 {
		for _, only := range j.keys {
			k, ok = only, true
		}
	}
	if !ok {
		return nil, errUnknownKID
	}
	if (k.alg != "" && k.alg != alg) || !usable(alg, k.key) {
		return nil, errKeyMismatch
	}
	j.verifications.Add(1)
	return k.key, nil
}

// tokenSum returns the SHA-256 of token.
func tokenSum(token string) [sha256.Size]byte {
	return sha256.Sum256([]byte(token))
}

// isHMAC reports whether alg is one of the HS* algorithms.
func isHMAC(alg string) bool { return strings.HasPrefix(alg, "HS") }
