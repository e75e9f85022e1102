package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts run atomically inside Redis, so a check and its commit
// cannot interleave with another instance's: this is what makes caps exact
// across instances and a refusal free of side effects.
//
// Every script reads the clock with TIME: lease expiries and bucket refills
// use Redis server time only, so skew between instances cannot mint tokens.
// Timestamps are whole milliseconds. redis.replicate_commands makes scripts
// that call TIME before writing legal on Redis 3.2-4.x; later versions
// always replicate effects and ignore it.

// admitSrc checks every claim, then commits all of them or none.
//
// KEYS: for claim i (1-based), KEYS[2i-1] is its lease ZSET and KEYS[2i] its
// bucket STRING.
// ARGV[1]: the lease member; ARGV[2]: lease TTL in ms; then for claim i,
// ARGV[3i] = connection cap (0: none), ARGV[3i+1] = tokens per ms (0: no
// bucket), ARGV[3i+2] = burst.
//
// Returns {1} when admitted, or {0, i, reason, retry_ms} naming the first
// claim refused: reason 1 = connection cap, 2 = rate (retry_ms is the time
// until the bucket holds one token, -1 when never).
//
// Every redis.call costs Redis about half a microsecond to a microsecond,
// and so does every number Lua hands Redis as an argument (it is formatted
// with %.17g), so the script makes as few calls as it can and passes text
// it already has. Per claim:
//
//   - a lease set: ZCARD, ZADD, PEXPIRE (ZREMRANGEBYSCORE too, only when
//     the set looks full: expired members left by a dead instance matter
//     only then);
//   - a bucket: GET and SET ... PX (tokens and time in one value, the
//     expiry set with it);
//
// and once per admission TIME. The first lease set's ZADD comes before the
// checks, with NX: its reply tells a client retry of an admission that
// already committed (answered yes again rather than charged twice), and a
// refusal takes it back with ZREM, so a refusal still leaves nothing.
//
// A lease set's expiry must cover its longest lease, and instances may run
// different lease TTLs: PEXPIRE ... GT (Redis 7.0) only ever extends it. A
// set this admission created has no expiry yet (GT would not set one): it
// gets a plain PEXPIRE. A set left without an expiry (by a script that
// failed half way) gets one from a later admission in a millisecond that
// is a multiple of 16 (checking on every admission cost a hot key one more
// call each time), or from the next refresh of a live lease in it. Before
// Redis 7.0 the script reads PTTL first.
const admitSrc = `
if redis.replicate_commands then redis.replicate_commands() end
local member = ARGV[1]
local ttls = ARGV[2]
local ttl = tonumber(ttls)
local n = #KEYS / 2
local gt = redis.REDIS_VERSION_NUM ~= nil
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = string.format('%d', now + ttl)

local caps, rates, bursts = {}, {}, {}
local first = 0
for i = 1, n do
  caps[i] = tonumber(ARGV[3*i])
  rates[i] = tonumber(ARGV[3*i+1])
  bursts[i] = tonumber(ARGV[3*i+2])
  if first == 0 and caps[i] > 0 then first = i end
end

-- The first lease goes in now; a member already there is a retry of an
-- admission that committed.
if first > 0 and redis.call('ZADD', KEYS[2*first-1], 'NX', exp, member) == 0 then
  return {1}
end
local function refuse(i, reason, retry)
  if first > 0 then redis.call('ZREM', KEYS[2*first-1], member) end
  return {0, i, reason, retry}
end

-- Check every claim; nothing below writes state that a refusal must undo
-- (dropping expired leases changes no live count). cards[i] is claim i's
-- lease count before this admission, tokens[i] its bucket level after
-- refill.
local cards, tokens = {}, {}
for i = 1, n do
  local cap = caps[i]
  if cap > 0 then
    local ck = KEYS[2*i-1]
    local card = redis.call('ZCARD', ck)
    if i == first then card = card - 1 end
    -- Expired leases still count in ZCARD, so a set below its cap has room
    -- whatever they are; only a set that looks full needs sweeping.
    if card >= cap then
      card = card - redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
      if card >= cap then return refuse(i, 1, 0) end
    end
    cards[i] = card
  end
  local rate = rates[i]
  if rate > 0 then
    local burst = bursts[i]
    if burst < 1 then return refuse(i, 2, -1) end
    local tk = burst
    local v = redis.call('GET', KEYS[2*i])
    if v then
      local sp = string.find(v, ' ', 1, true)
      local el = now - tonumber(string.sub(v, sp + 1))
      if el < 0 then el = 0 end
      tk = math.min(burst, tonumber(string.sub(v, 1, sp - 1)) + el * rate)
    end
    if tk < 1 then return refuse(i, 2, math.ceil((1 - tk) / rate)) end
    tokens[i] = tk
  end
end

-- Commit: every check passed.
for i = 1, n do
  local card = cards[i]
  if card then
    local ck = KEYS[2*i-1]
    if i ~= first then redis.call('ZADD', ck, exp, member) end
    if card == 0 then
      redis.call('PEXPIRE', ck, ttls)
    elseif gt then
      -- GT takes a key without an expiry as expiring never: such a set (left
      -- by a script that failed half way) gets one here. A reply of 0 mostly
      -- means that another admission set this very expiry in this same
      -- millisecond (a hot key), so the check runs in one millisecond of 16;
      -- a refresh of any live lease in the set sets an expiry too.
      if redis.call('PEXPIRE', ck, ttls, 'GT') == 0 and now % 16 == 0 and redis.call('PTTL', ck) == -1 then
        redis.call('PEXPIRE', ck, ttls)
      end
    elseif redis.call('PTTL', ck) < ttl then
      redis.call('PEXPIRE', ck, ttls)
    end
  end
  local tk = tokens[i]
  if tk then
    local rate = rates[i]
    tk = tk - 1
    -- The key lives until the bucket would be full again: a full bucket
    -- is the same as none.
    local full = math.ceil((bursts[i] - tk) / rate)
    if full < 1 then full = 1 end
    redis.call('SET', KEYS[2*i], string.format('%.17g %d', tk, now), 'PX', full)
  end
end
return {1}
`

// releaseSrc removes lease members: KEYS[i] loses member ARGV[i]. An empty
// ZSET disappears by itself. Removing a member that is not there does
// nothing, so a release can never free another lease's slot.
const releaseSrc = `
local n = 0
for i = 1, #KEYS do
  n = n + redis.call('ZREM', KEYS[i], ARGV[i])
end
return n
`

// refreshSrc renews leases.
//
// KEYS: lease ZSETs. ARGV[1]: lease TTL in ms; then for each key in order:
// its cap, the number m of members, and the m members.
//
// A member still present gets a new expiry. A member that is gone (its lease
// expired while Redis was unreachable, or it was admitted under on_error
// while Redis was down) is added back only if the cap has room; otherwise it
// is counted as lost. Returns {lost, key, readded member, key, member, ...}.
const refreshSrc = `
if redis.replicate_commands then redis.replicate_commands() end
local ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + ttl
local out = {0}
local j = 2
for i = 1, #KEYS do
  local k = KEYS[i]
  local cap = tonumber(ARGV[j])
  local m = tonumber(ARGV[j+1])
  j = j + 2
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local card = redis.call('ZCARD', k)
  for x = 1, m do
    local mem = ARGV[j]
    j = j + 1
    if redis.call('ZSCORE', k, mem) then
      redis.call('ZADD', k, exp, mem)
    elseif card < cap then
      redis.call('ZADD', k, exp, mem)
      card = card + 1
      out[#out+1] = k
      out[#out+1] = mem
    else
      out[1] = out[1] + 1
    end
  end
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', k, last[2]) end
end
return out
`

// scripts are the compiled scripts; redis.Script caches the SHA so calls go
// out as EVALSHA, falling back to EVAL when the server lost its cache.
type scripts struct {
	admit, release, refresh *redis.Script
}

func newScripts() scripts {
	return scripts{
		admit:   redis.NewScript(admitSrc),
		release: redis.NewScript(releaseSrc),
		refresh: redis.NewScript(refreshSrc),
	}
}
