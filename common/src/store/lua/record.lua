-- Adds ARGV[1] at most once per request id (KEYS[2], the id's marker, kept until ARGV[5]).
-- ARGV[2..3]: seed used ('' for none), seed epoch; ARGV[4]: the counter's expire-at.
-- Returns {1 (or -1: missing), used, epoch, fresh}.
local used = redis.call('HGET', KEYS[1], 'u')
if not used then
  if ARGV[2] == '' then return {-1, 0, 0, 0} end
  redis.call('HSET', KEYS[1], 'u', ARGV[2], 'e', ARGV[3])
end
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EXAT', expire_at(ARGV[5]))
if fresh then redis.call('HINCRBY', KEYS[1], 'u', ARGV[1]) end
-- Set on every record, not only on a seed: a counter of a closed period lives on while usage is recorded to it, and
-- one that has no expiry (left by an older version) gets one.
redis.call('EXPIREAT', KEYS[1], expire_at(ARGV[4]))
local now = redis.call('HMGET', KEYS[1], 'u', 'e')
return {1, tonumber(now[1]), tonumber(now[2] or 0), fresh and 1 or 0}
