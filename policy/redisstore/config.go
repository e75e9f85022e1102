package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy"
)

// FromConfig builds a Store from a policy's state.redis section: one
// address is a single node, several addresses with master_name are
// Sentinel, several without are Redis Cluster (which needs a hash tag in the
// prefix). One address that turns out to be a Cluster node is used with the
// cluster client when the prefix has a hash tag, and is an error naming the
// fix when it has not. Credentials are read from the environment variables the config
// names; a named variable that is not set is an error. fallback is the
// in-memory store used by on_error local (it may be nil for allow and
// deny). The Store owns the client it builds and closes it on Close.
func FromConfig(ctx context.Context, cfg policy.RedisConfig, fallback policy.Store, logger *slog.Logger) (*Store, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("redisstore: state.redis.addrs is empty")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	mode := failMode(cfg.OnError)
	opts := Options{
		Prefix:          cfg.Prefix,
		LeaseTTL:        cfg.LeaseTTL,
		RefreshInterval: cfg.RefreshInterval,
		Timeout:         cfg.Timeout,
		OnError:         mode,
		Fallback:        fallback,
		BreakerFailures: cfg.BreakerFailures,
		BreakerCooldown: cfg.BreakerCooldown,
		Logger:          logger,
	}
	if _, err := opts.withDefaults(); err != nil {
		return nil, err
	}
	uo, err := universalOptions(cfg)
	if err != nil {
		return nil, err
	}
	client := redis.NewUniversalClient(uo)
	s, err := New(ctx, client, opts)
	if errors.Is(err, errClusterNode) && hasHashTag(opts.Prefix) {
		// One address of a Cluster node: the cluster client finds the
		// others from it.
		_ = client.Close()
		client = redis.NewClusterClient(uo.Cluster())
		s, err = New(ctx, client, opts)
	}
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	s.own = true
	return s, nil
}

// failMode returns the FailMode of an on_error value that
// policy.RedisConfig.Validate accepted.
func failMode(onError string) FailMode {
	switch onError {
	case "allow":
		return FailAllow
	case "deny":
		return FailDeny
	}
	return FailLocal
}

// universalOptions translates the config into go-redis options.
// ContextTimeoutEnabled makes every socket read and write honour the
// store's per-call deadline. With TLS, dialling goes through tls.Dialer so
// that the handshake honours it too (go-redis's default TLS dialler does
// not take a context).
func universalOptions(cfg policy.RedisConfig) (*redis.UniversalOptions, error) {
	uo := &redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		DB:                    cfg.DB,
		ContextTimeoutEnabled: true,
		// The pool keeps this many connections set up in the background,
		// so that a burst of admissions does not dial on its own budget.
		MinIdleConns: warmConns,
	}
	var err error
	if uo.Username, err = fromEnv("username_env", cfg.UsernameEnv); err != nil {
		return nil, err
	}
	if uo.Password, err = fromEnv("password_env", cfg.PasswordEnv); err != nil {
		return nil, err
	}
	if uo.SentinelUsername, err = fromEnv("sentinel_username_env", cfg.SentinelUsernameEnv); err != nil {
		return nil, err
	}
	if uo.SentinelPassword, err = fromEnv("sentinel_password_env", cfg.SentinelPasswordEnv); err != nil {
		return nil, err
	}
	if cfg.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		uo.TLSConfig = tc
		uo.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := &tls.Dialer{Config: tc} // ServerName comes from addr
			return d.DialContext(ctx, network, addr)
		}
	}
	return uo, nil
}

// fromEnv reads the variable named by the config field; an empty name means
// no value.
func fromEnv(field, name string) (string, error) {
	if name == "" {
		return "", nil
	}
	v, ok := os.LookupEnv(name)
	if !ok {
		return "", fmt.Errorf("redisstore: state.redis.%s names %s, which is not set", field, name)
	}
	return v, nil
}
