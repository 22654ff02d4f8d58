-- Per-org rate limit: a sliding-window log (see `store::ratelimit`).
-- KEYS[1]: the log, a sorted set of admitted calls scored by their time in microseconds on Redis's clock.
-- ARGV: calls allowed per window, window (ms). Returns {1, calls still allowed} or {0, ms until one would be}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  -- Unique per call: the clock's own digits (exact, unlike Lua's number formatting) and the count before it.
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. ':' .. n)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, limit - n - 1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.ceil((tonumber(oldest[2]) + window - now) / 1000)}
