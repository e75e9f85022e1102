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
// bucket HASH.
// ARGV[1]: the lease member; ARGV[2]: lease TTL in ms; then for claim i,
// ARGV[3i] = connection cap (0: none), ARGV[3i+1] = tokens per ms (0: no
// bucket), ARGV[3i+2] = burst.
//
// Returns {1} when admitted, or {0, i, reason, retry_ms} naming the first
// claim refused: reason 1 = connection cap, 2 = rate (retry_ms is the time
// until the bucket holds one token, -1 when never).
//
// Every redis.call costs Redis about a microsecond, so the script makes as
// few as it can: a lease set costs ZCARD, ZADD, PTTL and PEXPIRE (expired
// members are swept only when they could matter, when the set looks full),
// a bucket HMGET, HSET and PEXPIRE.
const admitSrc = `
if redis.replicate_commands then redis.replicate_commands() end
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = #KEYS / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A client retry of an admission that already committed finds its member:
-- answer yes again rather than spend a second time.
for i = 1, n do
  if tonumber(ARGV[3*i]) > 0 then
    if redis.call('ZSCORE', KEYS[2*i-1], member) then return {1} end
    break
  end
end

-- Check every claim; nothing below writes state that a refusal must undo
-- (dropping expired leases changes no live count). tokens[i] is claim i's
-- bucket level after refill.
local tokens = {}
for i = 1, n do
  local cap = tonumber(ARGV[3*i])
  if cap > 0 then
    local ck = KEYS[2*i-1]
    -- Expired leases still count in ZCARD, so a set below its cap has room
    -- whatever they are; only a set that looks full needs sweeping.
    local card = redis.call('ZCARD', ck)
    if card >= cap then
      card = card - redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
      if card >= cap then return {0, i, 1, 0} end
    end
  end
  local rate = tonumber(ARGV[3*i+1])
  if rate > 0 then
    local burst = tonumber(ARGV[3*i+2])
    if burst < 1 then return {0, i, 2, -1} end
    local v = redis.call('HMGET', KEYS[2*i], 't', 'ts')
    local tk = burst
    if v[1] then
      local el = now - tonumber(v[2])
      if el < 0 then el = 0 end
      tk = math.min(burst, tonumber(v[1]) + el * rate)
    end
    if tk < 1 then return {0, i, 2, math.ceil((1 - tk) / rate)} end
    tokens[i] = tk
  end
end

-- Commit: every check passed.
local exp = now + ttl
local ts = string.format('%d', now)
for i = 1, n do
  if tonumber(ARGV[3*i]) > 0 then
    local ck = KEYS[2*i-1]
    redis.call('ZADD', ck, exp, member)
    -- The new lease expires last unless another instance runs a longer
    -- lease TTL: the set lives until its last lease would expire.
    if redis.call('PTTL', ck) < ttl then redis.call('PEXPIRE', ck, ttl) end
  end
  local tk = tokens[i]
  if tk then
    local rate = tonumber(ARGV[3*i+1])
    local burst = tonumber(ARGV[3*i+2])
    local bk = KEYS[2*i]
    tk = tk - 1
    redis.call('HSET', bk, 't', string.format('%.17g', tk), 'ts', ts)
    local full = math.ceil((burst - tk) / rate)
    if full < 1 then full = 1 end
    redis.call('PEXPIRE', bk, full)
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
