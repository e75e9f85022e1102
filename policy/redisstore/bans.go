package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/policy/penalty"
)

// Bans shares penalty bans between instances through Redis: a ban is
// written as its own key with PX (its remaining time; a ban already stored
// is never shortened) and published on one channel. Every instance
// subscribes: a ban issued anywhere is cached by every instance within one
// pub/sub delivery, until it expires, and checked locally from then on, so
// admissions make no Redis call for bans. On (re)subscribing an instance
// reads every ban key (SCAN) to catch up on what it missed. Bans is a
// penalty.Shared; it is safe for concurrent use.
type Bans struct {
	client  redis.UniversalClient
	prefix  string // of ban keys: <store prefix>ban:
	channel string
	log     *slog.Logger
}

var _ penalty.Shared = (*Bans)(nil)

// Bans returns the ban sharing of s: the same client and key prefix.
func (s *Store) Bans() *Bans {
	return &Bans{client: s.client, prefix: s.prefix + "ban:", channel: s.prefix + "bans", log: s.log}
}

// banScript stores a ban unless a longer one is stored, and publishes it.
// KEYS[1] the ban key; ARGV[1] the payload, ARGV[2] its time to live in ms,
// ARGV[3] the channel.
var banScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call('PUBLISH', ARGV[3], ARGV[1])
`)

const sep = "\x1f"

// encode renders b as penalty, until (unix ms), level, reason, dry, key.
func encode(b penalty.Ban) string {
	dry := "0"
	if b.DryRun {
		dry = "1"
	}
	var until int64
	if !b.Until.IsZero() {
		until = b.Until.UnixMilli()
	}
	return strings.Join([]string{b.Penalty, strconv.FormatInt(until, 10), strconv.Itoa(b.Level), b.Reason, dry, b.Key.String()}, sep)
}

func decode(s string) (penalty.Ban, error) {
	f := strings.SplitN(s, sep, 6)
	if len(f) != 6 {
		return penalty.Ban{}, errors.New("redisstore: malformed ban")
	}
	until, err1 := strconv.ParseInt(f[1], 10, 64)
	level, err2 := strconv.Atoi(f[2])
	k, err3 := penalty.ParseKey(f[5])
	if err := errors.Join(err1, err2, err3); err != nil {
		return penalty.Ban{}, fmt.Errorf("redisstore: malformed ban: %w", err)
	}
	b := penalty.Ban{Penalty: f[0], Level: level, Reason: f[3], DryRun: f[4] == "1", Key: k}
	if until > 0 {
		b.Until = time.UnixMilli(until)
	}
	return b, nil
}

func (b *Bans) key(p penalty.Ban) string { return b.prefix + p.Penalty + ":" + p.Key.String() }

// Publish stores and publishes a ban (one round trip), or with a zero
// Until deletes it and publishes its lifting.
func (b *Bans) Publish(ctx context.Context, p penalty.Ban) error {
	if p.Until.IsZero() {
		_, err := b.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Del(ctx, b.key(p))
			pipe.Publish(ctx, b.channel, encode(p))
			return nil
		})
		return wrap("unban", err)
	}
	ttl := time.Until(p.Until).Milliseconds()
	if ttl <= 0 {
		return nil
	}
	return wrap("ban", banScript.Run(ctx, b.client, []string{b.key(p)}, encode(p), ttl, b.channel).Err())
}

func wrap(op string, err error) error {
	if err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	return nil
}

// Subscribe applies every stored ban, then every published one, until
// ctx ends; after a lost connection it reads the stored bans again.
func (b *Bans) Subscribe(ctx context.Context, apply func(penalty.Ban)) error {
	ps := b.client.Subscribe(ctx, b.channel)
	// A blocked Receive does not watch ctx: closing ps ends it.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	defer ps.Close()
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				b.resync(ctx, apply)
			}
		case *redis.Message:
			if p, err := decode(m.Payload); err == nil {
				apply(p)
			}
		}
		if err != nil {
			b.warn(ctx, "ban subscription failed; retrying", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
}

// resync applies every ban stored (on every master of a cluster).
func (b *Bans) resync(ctx context.Context, apply func(penalty.Ban)) {
	scan := func(ctx context.Context, c redis.Cmdable) error {
		it := c.Scan(ctx, 0, b.prefix+"*", 1000).Iterator()
		for it.Next(ctx) {
			v, err := c.Get(ctx, it.Val()).Result()
			if err != nil {
				continue // expired between SCAN and GET
			}
			if p, err := decode(v); err == nil {
				apply(p)
			}
		}
		return it.Err()
	}
	var err error
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, b.client)
	}
	if err != nil {
		b.warn(ctx, "reading stored bans failed", err)
	}
}

func (b *Bans) warn(ctx context.Context, msg string, err error) {
	if b.log != nil {
		b.log.LogAttrs(ctx, slog.LevelWarn, "wslimit: "+msg, slog.String("error", err.Error()))
	}
}
