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
// KEYS[1] is the epoch string, KEYS[2] the sequence counter, KEYS[3] the
// set of instances that registered their leases during a recovery (see
// syncSrc); then for claim i (1-based), KEYS[2i+2] is its lease ZSET and
// KEYS[2i+3] its bucket STRING.
// ARGV[1]: the lease member; ARGV[2]: lease TTL in ms; ARGV[3]: the epoch
// this instance registered its leases under; ARGV[4]: the highest sequence
// number it has seen; ARGV[5]: its instance id; then for claim i,
// ARGV[3i+3] = connection cap (0: none), ARGV[3i+4] = tokens per ms (0: no
// bucket), ARGV[3i+5] = burst.
//
// Returns {1, full, empty, wait_ms, seq} when admitted (full and empty: bit
// i-1 set when this admission filled claim i's cap or emptied its bucket;
// wait_ms: the time until the first of those buckets holds a token again),
// {1, seq} for a retry of an admission that committed, {0, i, reason,
// retry_ms, seq} naming the first claim refused (reason 1 = connection
// cap, 2 = rate; retry_ms is the time until the bucket holds one token, -1
// when never), {2} when this
// instance must register its leases again before Redis can decide (the
// epoch is not the one it registered under, or the sequence went back: Redis
// lost data), and {3, seq} when Redis is recovering from a data loss, this
// instance has registered again but others may not have, and no cap is
// reached by the leases registered so far: the counts are a lower bound, so
// only a refusal is certain.
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
local n = (#KEYS - 3) / 2
local gt = redis.REDIS_VERSION_NUM ~= nil

-- The epoch, "<id>" or "<id> <recovery end ms> <expected>" (see syncSrc).
local ev = redis.call('GET', KEYS[1])
if not ev then return {2} end
local sp = string.find(ev, ' ', 1, true)
local untl = nil
if sp then
  if string.sub(ev, 1, sp - 1) ~= ARGV[3] then return {2} end
  untl = tonumber(string.sub(ev, sp + 1, string.find(ev, ' ', sp + 1, true) - 1))
elseif ev ~= ARGV[3] then
  return {2}
end
local seq = redis.call('INCR', KEYS[2])
if seq <= tonumber(ARGV[4]) then return {2} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = string.format('%d', now + ttl)
local recovering = untl ~= nil and now < untl
if recovering and redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 0 then return {2} end

local caps, rates, bursts = {}, {}, {}
local first = 0
for i = 1, n do
  caps[i] = tonumber(ARGV[3*i+3])
  rates[i] = tonumber(ARGV[3*i+4])
  bursts[i] = tonumber(ARGV[3*i+5])
  if first == 0 and caps[i] > 0 then first = i end
end

-- Recovering: a cap reached by what is registered is reached for certain;
-- anything else waits for the other instances (the caller retries, then
-- applies on_error).
if recovering then
  for i = 1, n do
    local cap = caps[i]
    if cap > 0 then
      local ck = KEYS[2*i+2]
      local card = redis.call('ZCARD', ck)
      if card >= cap then card = card - redis.call('ZREMRANGEBYSCORE', ck, '-inf', now) end
      if card >= cap then return {0, i, 1, 0, seq} end
    end
  end
  return {3, seq}
end

-- The first lease goes in now; a member already there is a retry of an
-- admission that committed.
if first > 0 and redis.call('ZADD', KEYS[2*first+2], 'NX', exp, member) == 0 then
  return {1, seq}
end
local function refuse(i, reason, retry)
  if first > 0 then redis.call('ZREM', KEYS[2*first+2], member) end
  return {0, i, reason, retry, seq}
end

-- Check every claim; nothing below writes state that a refusal must undo
-- (dropping expired leases changes no live count). cards[i] is claim i's
-- lease count before this admission, tokens[i] its bucket level after
-- refill.
local cards, tokens = {}, {}
for i = 1, n do
  local cap = caps[i]
  if cap > 0 then
    local ck = KEYS[2*i+2]
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
    local v = redis.call('GET', KEYS[2*i+3])
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

-- Commit: every check passed. full and empty mark (bit i-1) the claims
-- whose cap this admission fills and whose bucket it empties, wait the
-- first of those buckets' next token: the caller remembers them.
local full, empty, wait = 0, 0, 0
for i = 1, n do
  local card = cards[i]
  if card and i <= 52 and card + 1 >= caps[i] then full = full + 2 ^ (i - 1) end
  if card then
    local ck = KEYS[2*i+2]
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
    local life = math.ceil((bursts[i] - tk) / rate)
    if life < 1 then life = 1 end
    redis.call('SET', KEYS[2*i+3], string.format('%.17g %d', tk, now), 'PX', life)
    if tk < 1 and i <= 52 then
      local w = math.ceil((1 - tk) / rate)
      empty = empty + 2 ^ (i - 1)
      if wait == 0 or w < wait then wait = w end
    end
  end
end
return {1, full, empty, wait, seq}
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

// refreshSrc registers leases: it renews the members still present and
// adds back the missing ones, whatever the caps. A missing member is a
// live connection Redis no longer counts (its lease expired while Redis was
// unreachable, Redis lost data, or it was admitted under on_error): counting
// it again, even past the cap, makes Redis refuse until the real count is
// below the cap, rather than admit on top of connections it cannot see.
//
// KEYS: lease ZSETs. ARGV[1]: lease TTL in ms; then for each key in order:
// the number m of members, and the m members.
//
// Returns {key, added member, key, member, ...}.
const refreshSrc = `
if redis.replicate_commands then redis.replicate_commands() end
local ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + ttl
local out = {}
local j = 2
for i = 1, #KEYS do
  local k = KEYS[i]
  local m = tonumber(ARGV[j])
  j = j + 1
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  for x = 1, m do
    local mem = ARGV[j]
    j = j + 1
    if redis.call('ZADD', k, exp, mem) == 1 then
      out[#out+1] = k
      out[#out+1] = mem
    end
  end
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', k, last[2]) end
end
return out
`

// syncSrc opens every sync of an instance (see Store.sync): it checks the
// epoch, heartbeats the instance registry and tracks a recovery. The lease
// registration (refreshSrc) follows in the same pipeline.
//
// The epoch is a random id under which instances register their leases. It
// changes only when its key is gone, which means Redis lost its data
// (restarted empty, flushed): an instance that registered under another
// epoch, or that sees the sequence counter at or below a number it has seen
// (a failover to a replica that missed writes), knows that its leases may
// be gone. It then starts a recovery: for a grace period, or until as many
// instances as it knew of have registered their leases again, admissions
// refuse what the registered leases already fill and leave the rest to
// on_error (see admitSrc). The epoch value is "<id>" or, while recovering,
// "<id> <recovery end ms> <instances expected>".
//
// KEYS[1] epoch, KEYS[2] sequence, KEYS[3] the instances registered during
// the recovery, KEYS[4] the instance registry (a ZSET of instance ids
// scored by their heartbeat's expiry).
// ARGV[1] the caller's epoch ("" before its first sync), ARGV[2] the highest
// sequence it has seen, ARGV[3] a new epoch id in case there is none,
// ARGV[4] its instance id, ARGV[5] the heartbeat TTL in ms, ARGV[6] the
// recovery grace in ms, ARGV[7] the instances it knew of, ARGV[8] the TTL of
// the epoch and sequence keys in ms (renewed by every sync), ARGV[9] "1" when
// the instance leaves the registry (shutdown), ARGV[10] "1" when the caller
// could not reach Redis for a while (its breaker opened, or its leases may
// have expired): the others' leases may have expired too, so it starts a
// recovery as after a loss.
//
// Returns {epoch, sequence, live instances, data lost (0/1), recovering
// (0/1), rank}: rank is the number of live instances whose id sorts before
// the caller's (byte order), the order in which shares' remainders go.
const syncSrc = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine, inst, meta = ARGV[1], ARGV[4], ARGV[8]
local ev = redis.call('GET', KEYS[1])
local e, untl, expct = ev, nil, 0
if ev then
  local a = string.find(ev, ' ', 1, true)
  if a then
    local b = string.find(ev, ' ', a + 1, true)
    e = string.sub(ev, 1, a - 1)
    untl = tonumber(string.sub(ev, a + 1, b - 1))
    expct = tonumber(string.sub(ev, b + 1))
    if now >= untl then untl = nil end
  end
end
local seq = redis.call('INCR', KEYS[2])
local lost = 0
if not e then
  e = ARGV[3]
  if mine ~= '' then lost = 1 end
elseif mine ~= '' and (e ~= mine or seq <= tonumber(ARGV[2])) then
  lost = 1
end
if (lost == 1 or ARGV[10] == '1') and not untl then
  untl = now + tonumber(ARGV[6])
  expct = tonumber(ARGV[7])
  redis.call('DEL', KEYS[3])
end

if ARGV[9] == '1' then
  redis.call('ZREM', KEYS[4], inst)
else
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), inst)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local live = redis.call('ZCARD', KEYS[4])
local rank = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if m < inst then rank = rank + 1 end
end
local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[4], last[2]) end

if untl then
  -- An instance new to this epoch registers nothing that was lost: it
  -- counts on both sides.
  if redis.call('SADD', KEYS[3], inst) == 1 and mine == '' then expct = expct + 1 end
  redis.call('PEXPIREAT', KEYS[3], untl)
  if redis.call('SCARD', KEYS[3]) >= expct then
    untl = nil
    redis.call('DEL', KEYS[3])
  end
end
if untl then
  redis.call('SET', KEYS[1], e .. ' ' .. string.format('%d', untl) .. ' ' .. string.format('%d', expct), 'PX', meta)
else
  redis.call('SET', KEYS[1], e, 'PX', meta)
end
redis.call('PEXPIRE', KEYS[2], meta)
local rec = 0
if untl then rec = 1 end
return {e, seq, live, lost, rec, rank}
`

// scripts are the compiled scripts; redis.Script caches the SHA so calls go
// out as EVALSHA, falling back to EVAL when the server lost its cache.
type scripts struct {
	admit, release, refresh, sync *redis.Script
}

func newScripts() scripts {
	return scripts{
		admit:   redis.NewScript(admitSrc),
		release: redis.NewScript(releaseSrc),
		refresh: redis.NewScript(refreshSrc),
		sync:    redis.NewScript(syncSrc),
	}
}
