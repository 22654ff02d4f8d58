-- Adds ARGV[1] at most once per request id (KEYS[2], the id's marker, kept ARGV[5] seconds).
-- ARGV[2..4]: seed used ('' for none), seed epoch, expire-at. Returns {1 (or -1: missing), used, epoch, fresh}.
local used = redis.call('HGET', KEYS[1], 'u')
if not used then
  if ARGV[2] == '' then return {-1, 0, 0, 0} end
  redis.call('HSET', KEYS[1], 'u', ARGV[2], 'e', ARGV[3])
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5])
if fresh then redis.call('HINCRBY', KEYS[1], 'u', ARGV[1]) end
local now = redis.call('HMGET', KEYS[1], 'u', 'e')
return {1, tonumber(now[1]), tonumber(now[2] or 0), fresh and 1 or 0}
