-- Exact check and consume (see `CONSUME` in counters.rs).
-- KEYS[1]: the counter. ARGV: cost, limit, [seed used, seed epoch, expire-at].
-- Returns {allowed (1/0, or -1: missing, call again with the seed), used, leased}.
local h = redis.call('HMGET', KEYS[1], 'u', 'l', 'e')
if not h[3] then
  if ARGV[3] == nil then return {-1, 0, 0} end
  redis.call('HSET', KEYS[1], 'u', ARGV[3], 'l', 0, 'e', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], expire_at(ARGV[5]))
  h = {ARGV[3], '0', ARGV[4]}
end
local u = tonumber(h[1])
local l = tonumber(h[2] or '0')
local cost = tonumber(ARGV[1])
if cost > 0 and u + l + cost > tonumber(ARGV[2]) then return {0, u, l} end
if cost > 0 then u = redis.call('HINCRBY', KEYS[1], 'u', cost) end
return {1, u, l}
