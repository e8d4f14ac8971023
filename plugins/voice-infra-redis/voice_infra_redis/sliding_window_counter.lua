-- Sliding-window counter: one hash per policy {s = current window start (us),
-- p = previous window's count, c = current window's count}. O(1) memory per key.
-- Reference: voice_infra/ratelimit/algorithms.py (sliding_window_counter_state and
-- WindowCounter.roll, run as is by the memory backend); this is its port, with
-- microsecond integers for times (Redis' clock).
--
-- KEYS[i]     the hash of policy i; all keys share one hash tag (one Cluster slot)
-- ARGV[1]     cost;  ARGV[2] '1' = peek (cost 1, record nothing);  ARGV[3] unused
-- ARGV[2+2i]  limit of policy i;  ARGV[3+2i]  window of policy i in microseconds
--
-- Returns {allowed, now_us, then per policy: used, fits, retry_us, reset_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local peek = ARGV[2] == '1'
local need = cost
if peek then need = 1 end
local n = #KEYS
local out = {1, now}
local all_fit = true
local starts, currents = {}, {}

-- Seconds until a request of `need` fits (algorithms.py: _counter_retry_after), in windows.
local function retry_windows(limit, previous, current, elapsed)
  local room = limit - current - need
  if room >= 0 and previous > 0 then
    local fraction = 1 - room / previous
    if fraction < 1 then return math.max(0, fraction - elapsed) end
  end
  local room_next = limit - need
  local fraction = 0
  if current > 0 then fraction = 1 - room_next / current end
  return (1 - elapsed) + math.max(0, fraction)
end

for i = 1, n do
  local key = KEYS[i]
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local start = now - (now % window)  -- windows aligned on multiples of their length
  local state = redis.call('HMGET', key, 's', 'p', 'c')
  local previous, current = 0, 0
  if state[1] then
    local stored = tonumber(state[1])
    if stored == start then
      previous, current = tonumber(state[2]), tonumber(state[3])
    elseif start - stored == window then
      previous = tonumber(state[3])  -- the stored window is now the previous one
    end
  end
  local elapsed = (now - start) / window
  local estimate = previous * (1 - elapsed) + current
  local fits = estimate + need <= limit + 1e-9
  local retry = 0
  if fits and not peek then
    current = current + cost
    estimate = estimate + cost
  elseif not fits then
    retry = retry_windows(limit, previous, current, elapsed) * window
    all_fit = false
  end
  local reset = start
  if current > 0 then reset = start + 2 * window elseif previous > 0 then reset = start + window end
  if reset < now then reset = now end
  starts[i] = start
  currents[i] = current
  out[#out + 1] = math.ceil(estimate - 1e-9)
  out[#out + 1] = fits and 1 or 0
  out[#out + 1] = math.floor(retry + 0.5)
  out[#out + 1] = reset
  -- previous is kept for the write below
  starts[n + i] = previous
end

if not all_fit then
  out[1] = 0
elseif not peek then
  for i = 1, n do
    local window = tonumber(ARGV[3 + 2 * i])
    redis.call('HSET', KEYS[i], 's', starts[i], 'p', starts[n + i], 'c', currents[i])
    -- Useless once it is neither the current nor the previous window.
    redis.call('PEXPIRE', KEYS[i], math.ceil((starts[i] + 2 * window - now) / 1000))
  end
end
return out
