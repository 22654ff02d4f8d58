-- Seeds a missing counter from the durable copy passed at ARGV[seed_at] (used), ARGV[seed_at + 1] (epoch) and
-- ARGV[seed_at + 2] (expire-at); without them answers -1 so the caller reads the durable copy and calls again.
-- The including script defines seed_at.
if redis.call('HEXISTS', KEYS[1], 'e') == 0 then
  if ARGV[seed_at] == nil then return {-1, 0, 0, 0, 0} end
  redis.call('HSET', KEYS[1], 'u', ARGV[seed_at], 'l', 0, 'e', ARGV[seed_at + 1])
  redis.call('EXPIREAT', KEYS[1], expire_at(ARGV[seed_at + 2]))
end
