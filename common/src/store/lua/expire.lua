-- Every key a counter script writes gets an expiry, and never one in the past: EXPIREAT with a past time deletes
-- the key, and the script's next write would then recreate it without any expiry. So a counter of a period long
-- over (an old period still taking usage records, a history read) lives at least a day from now.
local function expire_at(at)
  return math.max(tonumber(at), tonumber(redis.call('TIME')[1]) + 86400)
end
