-- Applies a replica's report (see counters.rs); shared by lease.lua and settle.lua.
-- ARGV[1..7]: rid, epoch, consumed total, held, acknowledged consumed, refunded total, acknowledged refunds.
-- Leaves k, rid, u, l, e, applied, held and t (Redis TIME) for the script that follows.
local k = KEYS[1]
local rid = ARGV[1]
local f = redis.call('HMGET', k, 'u', 'l', 'e', 'c:' .. rid, 'h:' .. rid, 'r:' .. rid)
local u = tonumber(f[1])
local l = tonumber(f[2] or '0')
local e = tonumber(f[3])
local applied = 0
local held = 0
if tonumber(ARGV[2]) == e then
  applied = 1
  local c = tonumber(ARGV[3])
  -- Without a stored total (first contact, or Redis lost the counter and it was rebuilt from PostgreSQL), what
  -- the replica saw acknowledged is already inside the counter's value.
  local prev_c = tonumber(f[4] or ARGV[5])
  if c > prev_c then
    u = u + (c - prev_c)
    redis.call('HSET', k, 'c:' .. rid, c)
  end
  local r = tonumber(ARGV[6])
  local prev_r = tonumber(f[6] or ARGV[7])
  if r > prev_r then
    u = math.max(0, u - (r - prev_r))
    redis.call('HSET', k, 'r:' .. rid, r)
  end
  held = tonumber(ARGV[4])
  l = math.max(0, l - tonumber(f[5] or '0') + held)
else
  l = math.max(0, l - tonumber(f[5] or '0'))
end
local t = redis.call('TIME')
redis.call('HSET', k, 'u', u, 'l', l, 'h:' .. rid, held, 't:' .. rid, t[1])
