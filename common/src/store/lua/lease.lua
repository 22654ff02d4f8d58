-- A proxy's round trip, after seed.lua and apply_report.lua (see `LEASE` in counters.rs).
-- ARGV[8..10]: cost, want, limit. Returns {admitted, granted, used, leased, epoch}.
local cost = tonumber(ARGV[8])
local limit = tonumber(ARGV[10])
if cost > limit - u - l then
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == 't:' and tonumber(all[i + 1]) < tonumber(t[1]) - 30 then
      local other = string.sub(name, 3)
      local h = tonumber(redis.call('HGET', k, 'h:' .. other) or '0')
      l = math.max(0, l - h)
      redis.call('HDEL', k, 'h:' .. other, 't:' .. other)
    end
  end
  redis.call('HSET', k, 'l', l)
end
local admitted = 0
local granted = 0
if cost <= limit - u - l then
  admitted = 1
  if cost > 0 then
    local want = math.max(cost, math.min(tonumber(ARGV[9]), limit - u - l))
    granted = want - (want % cost)
    l = l + granted
    redis.call('HSET', k, 'l', l, 'h:' .. rid, held + granted)
  end
end
return {admitted, granted, u, l, e}
