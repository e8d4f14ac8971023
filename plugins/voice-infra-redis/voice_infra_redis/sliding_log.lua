-- Exact sliding log: one sorted set per policy, one member per unit of cost.
-- Reference: voice_infra/ratelimit/algorithms.py (SlidingLog.state and .record, run
-- as is by the memory backend); this is its port, with Redis' clock.
--
-- KEYS[i]     the sorted set of policy i; all keys share one hash tag (one Cluster slot)
-- ARGV[1]     cost (a positive integer, at most the smallest limit: checked by the caller)
-- ARGV[2]     '1': peek (decide for cost 1, record nothing); '0': check and record
-- ARGV[3]     token unique to this call: members are token (cost 1) or token:j (j = 1..cost)
-- ARGV[2+2i]  limit of policy i;  ARGV[3+2i]  window of policy i in microseconds
--
-- Returns {allowed, now_us, then per policy: used, fits, retry_us, reset_us}: every
-- number is an integer (Redis truncates Lua numbers), times in microseconds since the
-- epoch, so Python can build the whole RateLimitInfo from this one reply.
--
-- Redis >= 5 replicates a script by its effects, so reading TIME before writing is
-- allowed (Redis 7 has no other mode); every application server uses one clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local peek = ARGV[2] == '1'
local need = cost
if peek then need = 1 end
local n = #KEYS
local out = {1, now}
local all_fit = true

for i = 1, n do
  local key = KEYS[i]
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  -- Entries at or before now - window have left the window (SlidingLog: stamp <= cutoff).
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local used = redis.call('ZCARD', key)
  local fits = used + need <= limit
  local retry = 0
  if not fits then
    -- Wait until enough of the oldest units leave: the (used + need - limit)-th oldest.
    local to_free = used + need - limit
    if to_free <= used then
      local entry = redis.call('ZRANGE', key, to_free - 1, to_free - 1, 'WITHSCORES')
      retry = tonumber(entry[2]) + window - now
    end
    all_fit = false
  end
  local reset
  local recorded = used
  if fits and not peek then
    recorded = used + cost
    reset = now + window
  else
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if newest[2] then reset = tonumber(newest[2]) + window else reset = now end
  end
  out[#out + 1] = recorded
  out[#out + 1] = fits and 1 or 0
  out[#out + 1] = retry
  out[#out + 1] = reset
end

if not all_fit then
  out[1] = 0
elseif not peek then
  -- All-or-nothing: record only now that every policy allowed.
  local token = ARGV[3]
  for i = 1, n do
    local key = KEYS[i]
    if cost == 1 then
      redis.call('ZADD', key, now, token)
    else
      -- unpack() is limited by Lua's C stack: add in chunks.
      local j = 1
      while j <= cost do
        local args = {}
        local last = math.min(cost, j + 499)
        for m = j, last do
          args[#args + 1] = now
          args[#args + 1] = token .. ':' .. m
        end
        redis.call('ZADD', key, unpack(args))
        j = last + 1
      end
    end
    -- Every entry is at most one window old once this one is the newest.
    redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[3 + 2 * i]) / 1000))
  end
end
return out
