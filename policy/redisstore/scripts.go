package redisstore

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts run atomically inside Redis, so a check and its commit
// cannot interleave with another instance's: this is what makes caps exact
// across instances and a refusal free of side effects.
//
// Every script reads the clock with TIME: lease expiries and bucket refills
// use Redis server time only, so skew between instances cannot mint tokens.
// Timestamps are whole milliseconds. redis.replicate_commands makes scripts
// that call TIME before writing legal on Redis 3.2-4.x; later versions
// always replicate effects and ignore it.

// A connection slot is a lease: a member "<instance>:<lease id>" of the
// rule key's lease set (a ZSET whose members all score 0, so that one
// instance's members are the lex range "[<instance>:" to "(<instance>;";
// instance ids never contain ':' or ';'). Leases do not expire one by
// one: an instance vouches for its members in a set until a time (ms,
// Redis clock), and renews that once per refresh in every set it holds a
// lease in (auditSrc), whatever the number of its leases there.
//
// A set with members of one instance only (every per-client set, mostly)
// is vouched for by its own expiry: when its instance stops renewing it,
// the set expires with its members, as a lease did. Once a second instance
// has members in a set, the set gets an instance hash: one entry per
// instance with members, its time. An entry left to expire is a crashed
// or cut-off instance, whose members any admission that finds the set
// full removes (sweep). So: a set without a hash has a single owner; a set
// with one has an entry for every instance with members in it; the set and
// its hash expire no sooner than the latest of those times.

// luaLib holds the functions the lease scripts share. now, ttl and ttls
// (the lease TTL as a number and as text), upto (now + ttl as text) and
// gt (PEXPIRE ... GT exists, Redis 7.0) are set before it.
const luaLib = `
-- extend makes key k expire no sooner than ttl from now. PEXPIRE ... GT
-- takes a key without an expiry as expiring never, so a key left without
-- one (created by this script, or by a script that failed half way) is
-- given one by a plain PEXPIRE.
local function extend(k)
  if gt then
    if redis.call('PEXPIRE', k, ttls, 'GT') == 1 or redis.call('PTTL', k) ~= -1 then return end
  elseif redis.call('PTTL', k) >= ttl then
    return
  end
  redis.call('PEXPIRE', k, ttls)
end

-- ownerOf returns the instance of lease member m (m itself when it is
-- not "<instance>:<id>", as no member the store writes).
local function ownerOf(m)
  local c = string.find(m, ':', 1, true)
  if c then return string.sub(m, 1, c - 1) end
  return m
end

-- vouch makes instance inst, which has members in lease set ck, vouch for
-- them until upto: in the instance hash hk when the set has one, or when
-- another instance has members too (the hash is then made, the single
-- owner so far vouching until the set's expiry); by the set's expiry
-- otherwise.
local function vouch(ck, hk, inst)
  if redis.call('EXISTS', hk) == 0 then
    if redis.call('ZLEXCOUNT', ck, '[' .. inst .. ':', '(' .. inst .. ';') == redis.call('ZCARD', ck) then
      extend(ck)
      return
    end
    -- The other members are the single owner's; ours are a contiguous lex
    -- range, so the set's first or last member is one of them.
    local m = redis.call('ZRANGE', ck, 0, 0)[1]
    if ownerOf(m) == inst then m = redis.call('ZRANGE', ck, -1, -1)[1] end
    local left = redis.call('PTTL', ck)
    if left < 0 then left = ttl end
    redis.call('HSET', hk, ownerOf(m), string.format('%d', now + left))
    redis.call('PEXPIRE', hk, string.format('%d', math.max(left, ttl)))
  end
  redis.call('HSET', hk, inst, upto)
  extend(hk)
  extend(ck)
end

-- sweep removes from lease set ck the members of the instances whose entry
-- in hash hk has expired, and the entries; it returns the members removed.
local function sweep(ck, hk)
  local n = 0
  local h = redis.call('HGETALL', hk)
  for j = 1, #h, 2 do
    if tonumber(h[j+1]) <= now then
      n = n + redis.call('ZREMRANGEBYLEX', ck, '[' .. h[j] .. ':', '(' .. h[j] .. ';')
      redis.call('HDEL', hk, h[j])
    end
  end
  return n
end
`

// luaNow reads the Redis clock into now (ms) and the lease TTL from
// ARGV[ttlArg]; it declares what luaLib needs.
func luaNow(ttlArg int) string {
	return `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttls = ARGV[` + strconv.Itoa(ttlArg) + `]
local ttl = tonumber(ttls)
local gt = redis.REDIS_VERSION_NUM ~= nil
local upto = string.format('%d', now + ttl)
` + luaLib
}

// admitSrc checks every claim, then commits all of them or none.
//
// KEYS[1] is the epoch string, KEYS[2] the sequence counter, KEYS[3] the
// set of instances that registered their leases during a recovery (see
// syncSrc); then for claim i (1-based), KEYS[3i+1] is its lease set,
// KEYS[3i+2] the set's instance hash and KEYS[3i+3] its bucket STRING.
// ARGV[1]: the lease member; ARGV[2]: lease TTL in ms; ARGV[3]: the epoch
// this instance registered its leases under; ARGV[4]: the highest sequence
// number it has seen; ARGV[5]: its instance id; then for claim i,
// ARGV[4i+2] = connection cap (0: none), ARGV[4i+3] = tokens per ms (0: no
// bucket), ARGV[4i+4] = burst, ARGV[4i+5] = "1" when this instance holds
// no counted lease in the set, so that it may not vouch for the set yet
// and does (vouch); "0": a live lease of this instance is there, and its
// refresh keeps it vouched for.
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
// so the script makes as few calls as it can. Per claim, when this
// instance already holds a lease in the set: ZCARD and ZADD (HGETALL and a
// sweep too, only when the set looks full: a dead instance's members
// matter only then); a set the admission starts gets its expiry (and loses
// an old hash); an instance's first lease in a set of others vouches
// (EXISTS, then HSET and the expiries, or more when it makes the hash). A bucket: GET and SET ... PX (tokens
// and time in one value, the expiry set with it). Once per admission TIME.
// The first lease set's ZADD comes before the checks, with NX: its reply
// tells a client retry of an admission that already committed (answered
// yes again rather than charged twice), and a refusal takes it back with
// ZREM, so a refusal still leaves nothing.
var admitSrc = luaNow(2) + `
local member, inst = ARGV[1], ARGV[5]
local n = (#KEYS - 3) / 3

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
local recovering = untl ~= nil and now < untl
if recovering and redis.call('SISMEMBER', KEYS[3], inst) == 0 then return {2} end

local caps, rates, bursts = {}, {}, {}
local first = 0
for i = 1, n do
  caps[i] = tonumber(ARGV[4*i+2])
  rates[i] = tonumber(ARGV[4*i+3])
  bursts[i] = tonumber(ARGV[4*i+4])
  if first == 0 and caps[i] > 0 then first = i end
end

-- count returns claim i's lease count, minus the members of dead
-- instances when the set looks full (without them it has room whatever
-- they are), minus skip.
local function count(i, skip)
  local ck = KEYS[3*i+1]
  local card = redis.call('ZCARD', ck) - skip
  if card >= caps[i] then card = card - sweep(ck, KEYS[3*i+2]) end
  return card
end

-- Recovering: a cap reached by what is registered is reached for certain;
-- anything else waits for the other instances (the caller retries, then
-- applies on_error).
if recovering then
  for i = 1, n do
    if caps[i] > 0 and count(i, 0) >= caps[i] then return {0, i, 1, 0, seq} end
  end
  return {3, seq}
end

-- The first lease goes in now; a member already there is a retry of an
-- admission that committed.
if first > 0 and redis.call('ZADD', KEYS[3*first+1], 'NX', 0, member) == 0 then
  return {1, seq}
end
local function refuse(i, reason, retry)
  if first > 0 then redis.call('ZREM', KEYS[3*first+1], member) end
  return {0, i, reason, retry, seq}
end

-- Check every claim; nothing below writes state that a refusal must undo
-- (sweeping dead instances changes no live count). cards[i] is claim i's
-- lease count before this admission, tokens[i] its bucket level after
-- refill.
local cards, tokens = {}, {}
for i = 1, n do
  if caps[i] > 0 then
    local skip = 0
    if i == first then skip = 1 end
    local card = count(i, skip)
    if card >= caps[i] then return refuse(i, 1, 0) end
    cards[i] = card
  end
  local rate = rates[i]
  if rate > 0 then
    local burst = bursts[i]
    if burst < 1 then return refuse(i, 2, -1) end
    local tk = burst
    local v = redis.call('GET', KEYS[3*i+3])
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
  if card then
    if i <= 52 and card + 1 >= caps[i] then full = full + 2 ^ (i - 1) end
    local ck = KEYS[3*i+1]
    if i ~= first then redis.call('ZADD', ck, 0, member) end
    local hk = KEYS[3*i+2]
    if card == 0 then
      -- A set this admission starts has a single owner: no hash (one left
      -- by earlier owners vouches for nothing), the set's expiry vouches.
      redis.call('PEXPIRE', ck, ttls)
      redis.call('DEL', hk)
    elseif ARGV[4*i+5] == '1' then
      vouch(ck, hk, inst)
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
    redis.call('SET', KEYS[3*i+3], string.format('%.17g %d', tk, now), 'PX', life)
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
// ZSET disappears by itself (the instance hash expires with its entries).
// Removing a member that is not there does nothing, so a release can
// never free another lease's slot.
const releaseSrc = `
local n = 0
for i = 1, #KEYS do
  n = n + redis.call('ZREM', KEYS[i], ARGV[i])
end
return n
`

// refreshSrc registers leases: it adds back the members missing from
// their sets, whatever the caps, and renews this instance's entry in each
// set's instance hash. A missing member is a live connection Redis no
// longer counts (Redis lost data, the instance was cut off for longer than
// its lease TTL and swept, or the lease was admitted under on_error):
// counting it again, even past the cap, makes Redis refuse until the real
// count is below the cap, rather than admit on top of connections it
// cannot see.
//
// KEYS: pairs of a lease set and its instance hash. ARGV[1]: lease TTL in
// ms; ARGV[2]: the instance id; then for each pair in order: the number m
// of members, and the m members.
//
// Returns {key, added member, key, member, ...}.
var refreshSrc = luaNow(1) + `
local inst = ARGV[2]
local out = {}
local j = 3
for i = 1, #KEYS, 2 do
  local k = KEYS[i]
  local m = tonumber(ARGV[j])
  j = j + 1
  for x = 1, m do
    local mem = ARGV[j]
    j = j + 1
    if redis.call('ZADD', k, 0, mem) == 1 then
      out[#out+1] = k
      out[#out+1] = mem
    end
  end
  vouch(k, KEYS[i+1], inst)
end
return out
`

// auditSrc is the keep-alive of an instance's leases: per lease set it
// holds leases in, one entry renewed, whatever the number of those
// leases. It also counts the instance's members in the set against the
// number it holds, so that members lost behind its back (a key deleted by
// hand, a partial loss) are registered again (refreshSrc) in the same sync.
//
// KEYS: pairs of a lease set and its instance hash. ARGV[1]: lease TTL in
// ms; ARGV[2]: the instance id; then for each pair the number of live
// leases the instance holds in the set.
//
// Returns the 1-based indexes of the pairs whose set holds fewer of the
// instance's members than that.
var auditSrc = luaNow(1) + `
local inst = ARGV[2]
local lo, hi = '[' .. inst .. ':', '(' .. inst .. ';'
local out = {}
for i = 1, #KEYS, 2 do
  local x = (i + 1) / 2
  local have = redis.call('ZLEXCOUNT', KEYS[i], lo, hi)
  if have < tonumber(ARGV[2+x]) then out[#out+1] = x end
  if redis.call('EXISTS', KEYS[i+1]) == 1 then
    redis.call('HSET', KEYS[i+1], inst, upto)
    extend(KEYS[i+1])
  elseif have > 0 and have < redis.call('ZCARD', KEYS[i]) then
    -- Members of another instance in a set without a hash (an admission
    -- of ours that raced our release of the set's last lease did not
    -- vouch): make the hash, so that a crash of either can be swept.
    vouch(KEYS[i], KEYS[i+1], inst)
  end
  extend(KEYS[i])
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
	admit, release, refresh, audit, sync *redis.Script
}

func newScripts() scripts {
	return scripts{
		admit:   redis.NewScript(admitSrc),
		release: redis.NewScript(releaseSrc),
		refresh: redis.NewScript(refreshSrc),
		audit:   redis.NewScript(auditSrc),
		sync:    redis.NewScript(syncSrc),
	}
}
