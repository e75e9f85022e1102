package policy

import (
	"time"

	"github.com/wslimit/wslimit/keys/identity"
	"github.com/wslimit/wslimit/policy/capacity"
	"github.com/wslimit/wslimit/policy/listener"
	"github.com/wslimit/wslimit/policy/messages"
	"github.com/wslimit/wslimit/policy/penalty"
	"github.com/wslimit/wslimit/policy/pressure"
)

// Config is a policy as written: the YAML file decodes into it, and Go
// programs may build one directly. New validates and compiles it into a
// Policy. The zero value of every optional field means its documented
// default (see docs/policy.md).
type Config struct {
	// Version of the policy format; must be 1.
	Version int `yaml:"version" json:"version,omitempty"`
	// ClientIP says how the client address is found.
	ClientIP ClientIPConfig `yaml:"client_ip" json:"client_ip,omitempty"`
	// Identity configures verified identities (JWT, session cookie).
	Identity IdentityConfig `yaml:"identity" json:"identity,omitempty"`
	// Exempt lists CIDR blocks (or single addresses) that no rule limits.
	Exempt []string `yaml:"exempt" json:"exempt,omitempty"`
	// Rules are evaluated together, all-or-nothing.
	Rules []RuleConfig `yaml:"rules" json:"rules,omitempty"`
	// State configures where counters and buckets live.
	State StateConfig `yaml:"state" json:"state,omitempty"`
	// Reject says how a refused handshake is answered.
	Reject RejectConfig `yaml:"reject" json:"reject,omitempty"`
	// Mode is "enforce" (default) or "dry_run".
	Mode string `yaml:"mode" json:"mode,omitempty"`
	// Listener caps TCP connections at accept (package policy/listener);
	// nil means no listener caps.
	Listener *listener.Config `yaml:"listener" json:"listener,omitempty"`
	// Messages limits what admitted connections send: messages and bytes
	// per period, message size (package policy/messages); nil means none.
	Messages *messages.Config `yaml:"messages" json:"messages,omitempty"`
	// Penalties ban keys that offend repeatedly (package policy/penalty);
	// none by default.
	Penalties []penalty.Config `yaml:"penalties" json:"penalties,omitempty"`
	// Capacity says how `auto` connection caps are derived from the
	// machine (package policy/capacity); nil means the defaults.
	Capacity *capacity.Config `yaml:"capacity" json:"capacity,omitempty"`
	// Pressure adapts the policy to measured pressure (package
	// policy/pressure); nil means fixed limits.
	Pressure *pressure.Config `yaml:"pressure" json:"pressure,omitempty"`
}

// ClientIPConfig says how the client address is taken from a request.
type ClientIPConfig struct {
	// TrustedProxies are CIDR blocks whose forwarding headers are believed.
	TrustedProxies []string `yaml:"trusted_proxies" json:"trusted_proxies,omitempty"`
	// Header is X-Forwarded-For (default when TrustedProxies is set),
	// Forwarded or X-Real-IP.
	Header string `yaml:"header" json:"header,omitempty"`
}

// IdentityConfig configures verified identities.
type IdentityConfig struct {
	// JWT configures bearer-token verification (from, algorithms,
	// key_file, secret_env, secret_file, issuer, audience, leeway, claim,
	// cache_size, max_token_bytes); nil disables jwt keys.
	JWT *identity.JWTConfig `yaml:"jwt" json:"jwt,omitempty"`
	// Session configures the session-cookie key.
	Session *SessionConfig `yaml:"session" json:"session,omitempty"`
}

// SessionConfig configures the session-cookie key.
type SessionConfig struct {
	// Cookie is the session cookie's name (the default of cookie keys).
	Cookie string `yaml:"cookie" json:"cookie,omitempty"`
	// HMACSecretEnv names an environment variable holding a secret with
	// which session cookies are verified (identity.HMACCookieVerifier:
	// "<id>.<base64url HMAC-SHA256(id)>"); the verified id becomes the key.
	HMACSecretEnv string `yaml:"hmac_secret_env" json:"hmac_secret_env,omitempty"`
	// Verify, when set (Go only), verifies a cookie value and returns the
	// id to count by. It takes precedence over HMACSecretEnv. Without any
	// verification a session cookie is attacker-mintable: combine such a
	// rule with an ip or subnet rule.
	Verify func(value string) (id string, ok bool) `yaml:"-" json:"-"`
}

// RuleConfig is one rule as written.
type RuleConfig struct {
	// Name identifies the rule in rejections, logs, metrics and stores;
	// unique within a policy.
	Name string `yaml:"name" json:"name,omitempty"`
	// Key is what the rule counts by: ip, subnet, global, header:NAME
	// (and, with identity configured, jwt, jwt.CLAIM, cookie:NAME).
	Key string `yaml:"key" json:"key,omitempty"`
	// IPv4Prefix is the prefix length of subnet keys for IPv4 (default 24).
	IPv4Prefix int `yaml:"ipv4_prefix" json:"ipv4_prefix,omitempty"`
	// IPv6Prefix is the prefix length of subnet keys for IPv6 (default 64).
	IPv6Prefix int `yaml:"ipv6_prefix" json:"ipv6_prefix,omitempty"`
	// Connections caps open connections per key; 0 means no cap;
	// capacity.Auto (`auto`, global rules only) derives the cap from the
	// machine when the policy is compiled.
	Connections capacity.Cap `yaml:"connections" json:"connections,omitempty"`
	// Rate is the handshake rate per key: "10/s", "100/m", "5/h", "3/10s";
	// empty means no rate limit.
	Rate string `yaml:"rate" json:"rate,omitempty"`
	// Burst is the bucket size; default max(1, ceil(rate per second)).
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// OnMissing is "skip" (default) or "reject" when the key is absent.
	OnMissing string `yaml:"on_missing" json:"on_missing,omitempty"`
	// MaxKeys overrides state.max_keys for this rule's buckets.
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
	// Tiers choose other limits by the value of a verified JWT claim.
	Tiers *TiersConfig `yaml:"tiers" json:"tiers,omitempty"`
}

// TiersConfig chooses a rule's limits by the value of a verified claim.
type TiersConfig struct {
	// Claim is the JWT claim whose string value selects the tier.
	Claim string `yaml:"claim" json:"claim,omitempty"`
	// Values maps a claim value to the limits of its tier; a request whose
	// claim is absent or has another value gets the rule's own limits.
	Values map[string]TierConfig `yaml:"values" json:"values,omitempty"`
}

// TierConfig is one tier's limits; a field left at zero keeps the rule's.
type TierConfig struct {
	// Connections caps open connections per key in this tier.
	Connections int `yaml:"connections" json:"connections,omitempty"`
	// Rate is the handshake rate in this tier.
	Rate string `yaml:"rate" json:"rate,omitempty"`
	// Burst is the bucket size in this tier.
	Burst int `yaml:"burst" json:"burst,omitempty"`
}

// StateConfig configures where limiting state lives.
type StateConfig struct {
	// MaxKeys bounds each rule's token-bucket table (default 100000).
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
	// OnFull is "evict" (default: drop a bucket not used lately) or
	// "refuse" (refuse handshakes from new keys while the table is full).
	OnFull string `yaml:"on_full" json:"on_full,omitempty"`
	// Store is "memory" (default) or "redis".
	Store string `yaml:"store" json:"store,omitempty"`
	// Redis configures the Redis store.
	Redis RedisConfig `yaml:"redis" json:"redis,omitempty"`
}

// RedisConfig configures the shared Redis store.
type RedisConfig struct {
	// Addrs are host:port addresses (one for a single node; several for
	// Sentinel with MasterName).
	Addrs []string `yaml:"addrs" json:"addrs,omitempty"`
	// MasterName selects Sentinel mode.
	MasterName string `yaml:"master_name" json:"master_name,omitempty"`
	// DB is the database number.
	DB int `yaml:"db" json:"db,omitempty"`
	// UsernameEnv and PasswordEnv name environment variables holding
	// credentials; credentials never appear in the file.
	UsernameEnv string `yaml:"username_env" json:"username_env,omitempty"`
	PasswordEnv string `yaml:"password_env" json:"password_env,omitempty"`
	// TLS enables TLS to Redis.
	TLS bool `yaml:"tls" json:"tls,omitempty"`
	// Prefix namespaces every key (default "wslimit:").
	Prefix string `yaml:"prefix" json:"prefix,omitempty"`
	// LeaseTTL is how long a slot outlives its instance (default 30s).
	LeaseTTL time.Duration `yaml:"lease_ttl" json:"lease_ttl,omitempty"`
	// Timeout bounds one store call (default 50ms).
	Timeout time.Duration `yaml:"timeout" json:"timeout,omitempty"`
	// OnError is "local" (default: fall back to in-memory limits),
	// "allow" or "deny".
	OnError string `yaml:"on_error" json:"on_error,omitempty"`
	// RefreshInterval is how often an instance renews the leases of its
	// live connections, one entry per key it holds leases under (default
	// LeaseTTL/3; must be below LeaseTTL).
	RefreshInterval time.Duration `yaml:"refresh_interval" json:"refresh_interval,omitempty"`
	// BreakerFailures is how many consecutive failed calls open the
	// circuit breaker, which then applies on_error without calling Redis
	// (default 3).
	BreakerFailures int `yaml:"breaker_failures" json:"breaker_failures,omitempty"`
	// BreakerCooldown is how long the open breaker waits before one probe
	// call tries Redis again (default 1s).
	BreakerCooldown time.Duration `yaml:"breaker_cooldown" json:"breaker_cooldown,omitempty"`
	// SentinelUsernameEnv and SentinelPasswordEnv name environment
	// variables holding the Sentinels' own credentials, when they have any.
	SentinelUsernameEnv string `yaml:"sentinel_username_env" json:"sentinel_username_env,omitempty"`
	SentinelPasswordEnv string `yaml:"sentinel_password_env" json:"sentinel_password_env,omitempty"`
}

// RejectConfig says how a refused handshake is answered.
type RejectConfig struct {
	// Mode is "status" (default: HTTP 429 before the upgrade), "close"
	// (upgrade, then close with 1013 or 1008 and a reason) or "auto"
	// (close for requests that carry Origin, i.e. browsers; status for
	// the rest).
	Mode string `yaml:"mode" json:"mode,omitempty"`
	// MaxClosing bounds the refused connections being closed at once in
	// close and auto modes (default 256); past it, refusals get a status.
	MaxClosing int `yaml:"max_closing" json:"max_closing,omitempty"`
	// MaxClosingPerIP bounds them per client address (default 16).
	MaxClosingPerIP int `yaml:"max_closing_per_ip" json:"max_closing_per_ip,omitempty"`
	// RateLimitHeaders adds the IETF draft's RateLimit-Policy and RateLimit
	// headers to status refusals, beside Retry-After.
	RateLimitHeaders bool `yaml:"ratelimit_headers" json:"ratelimit_headers,omitempty"`
	// CapRetryAfter is the Retry-After sent when a connection cap refuses
	// (a cap has no refill time); default 1s.
	CapRetryAfter time.Duration `yaml:"cap_retry_after" json:"cap_retry_after,omitempty"`
}
