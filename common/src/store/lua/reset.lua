-- Resets a counter to zero under epoch ARGV[1] (expiring at ARGV[2]) unless it already has that epoch or a newer
-- one (-2). Returns the value it had, or -1 when it had none.
local prev = redis.call('HMGET', KEYS[1], 'u', 'e')
if prev[2] and tonumber(prev[2]) >= tonumber(ARGV[1]) then return -2 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'u', 0, 'l', 0, 'e', ARGV[1])
redis.call('EXPIREAT', KEYS[1], expire_at(ARGV[2]))
if prev[1] then return tonumber(prev[1]) end
return -1
