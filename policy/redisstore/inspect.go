package redisstore

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wslimit/wslimit/keys"
	"github.com/wslimit/wslimit/policy"
)

var _ policy.Inspector = (*Store)(nil)

// Bounds of an inspection, which reads Redis (SCAN and a count script):
// at most inspectKeys lease sets and as many buckets per rule, within
// inspectBudget; a rule's result is reused for inspectTTL, so that a page
// polled by many cannot make Redis scan more than once a second per rule.
const (
	inspectKeys   = 10000
	inspectBudget = time.Second
	inspectTTL    = time.Second
	maxRules      = 1024
)

// countSrc counts the members of each lease set in KEYS (pairs of a lease
// set and its instance hash) whose instance still vouches for them, by the
// Redis clock: all of them in a set without a hash (its single owner
// vouches by the set's expiry).
var countSrc = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS, 2 do
  local n = 0
  local h = redis.call('HGETALL', KEYS[i+1])
  if #h == 0 then n = redis.call('ZCARD', KEYS[i]) end
  for j = 1, #h, 2 do
    if tonumber(h[j+1]) > now then
      n = n + redis.call('ZLEXCOUNT', KEYS[i], '[' .. h[j] .. ':', '(' .. h[j] .. ';')
    end
  end
  out[#out+1] = n
end
return out
`)

// inspectCache keeps the last inspection of each rule.
type inspectCache struct {
	mu    sync.Mutex
	rules map[string]*ruleSnap
}

type ruleSnap struct {
	at    time.Time
	stats policy.RuleStats
	top   []policy.KeyCount // every key holding slots, most first
}

// noteRules records the rule names of claims, for Rules; the set is read
// without a lock and copied on the rare write.
func (s *Store) noteRules(claims []policy.Claim) {
	seen := s.rules.Load()
	for i := range claims {
		r := claims[i].Rule
		if seen != nil {
			if _, ok := (*seen)[r]; ok {
				continue
			}
		}
		s.addRule(r)
		seen = s.rules.Load()
	}
}

func (s *Store) addRule(r string) {
	s.insp.mu.Lock()
	defer s.insp.mu.Unlock()
	old := s.rules.Load()
	next := map[string]struct{}{}
	if old != nil {
		if _, ok := (*old)[r]; ok || len(*old) >= maxRules {
			return
		}
		for k := range *old {
			next[k] = struct{}{}
		}
	}
	next[r] = struct{}{}
	s.rules.Store(&next)
}

// Rules names the rules this instance has admitted under (policy.Inspector).
func (s *Store) Rules() []string {
	seen := s.rules.Load()
	if seen == nil {
		return nil
	}
	out := make([]string, 0, len(*seen))
	for r := range *seen {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// Stats reads rule's state from Redis, for all instances together
// (policy.Inspector): the keys holding unexpired leases, their leases, and
// the buckets. It scans at most 10 000 lease sets and as many buckets
// within one second (counts past those bounds are left out), and reuses a
// result for a second. Evictions are always zero: Redis buckets expire.
func (s *Store) Stats(rule string) policy.RuleStats {
	return s.inspect(rule).stats
}

// TopKeys returns up to n keys holding the most leases under rule, read as
// Stats reads them (policy.Inspector).
func (s *Store) TopKeys(rule string, n int) []policy.KeyCount {
	top := s.inspect(rule).top
	return slices.Clone(top[:min(n, len(top))])
}

func (s *Store) inspect(rule string) *ruleSnap {
	s.insp.mu.Lock()
	defer s.insp.mu.Unlock()
	if r := s.insp.rules[rule]; r != nil && time.Since(r.at) < inspectTTL {
		return r
	}
	ctx, cancel := context.WithTimeout(s.ctx, inspectBudget)
	defer cancel()
	base := globEscape(s.prefix+rule) + ":{*}:"
	sets := s.scan(ctx, base+"l")
	r := &ruleSnap{at: time.Now(), stats: policy.RuleStats{Buckets: len(s.scan(ctx, base+"t"))}}
	for chunk := range slices.Chunk(sets, 500) {
		pairs := make([]string, 0, 2*len(chunk))
		for _, k := range chunk {
			pairs = append(pairs, k, hashOf(k))
		}
		counts, err := countSrc.Run(ctx, s.client, pairs).Int64Slice()
		if err != nil {
			break
		}
		for i, k := range chunk {
			if counts[i] > 0 {
				r.top = append(r.top, policy.KeyCount{Key: parseKey(k, len(s.prefix)+len(rule)+2), Count: int(counts[i])})
				r.stats.Connections += int(counts[i])
			}
		}
	}
	r.stats.Keys = len(r.top)
	slices.SortFunc(r.top, func(a, b policy.KeyCount) int { return b.Count - a.Count })
	if s.insp.rules == nil {
		s.insp.rules = map[string]*ruleSnap{}
	}
	s.insp.rules[rule] = r
	return r
}

// scan returns up to inspectKeys keys matching pattern (on every master of
// a cluster).
func (s *Store) scan(ctx context.Context, pattern string) []string {
	var out []string
	var mu sync.Mutex
	one := func(ctx context.Context, c redis.UniversalClient) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			full := len(out) >= inspectKeys
			if !full {
				out = append(out, it.Val())
			}
			mu.Unlock()
			if full {
				break
			}
		}
		return it.Err()
	}
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		_ = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return one(ctx, c) })
		return out
	}
	_ = one(ctx, s.client)
	return out
}

// parseKey reads the keys.Key back from a lease set key
// "<prefix><rule>:{<key>}:l", whose <key> starts at from.
func parseKey(redisKey string, from int) keys.Key {
	if from > len(redisKey)-3 {
		return keys.String(redisKey)
	}
	k := redisKey[from : len(redisKey)-3]
	switch {
	case k == "global":
		return keys.Global()
	case strings.HasPrefix(k, "s:"):
		return keys.String(k[2:])
	}
	if p, err := netip.ParsePrefix(k); err == nil {
		return keys.Key{Kind: keys.KindSubnet, Prefix: p}
	}
	if a, err := netip.ParseAddr(k); err == nil {
		return keys.IP(a)
	}
	return keys.String(k)
}

// globEscape quotes the SCAN pattern characters of s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
