-- KEYS: presence zsets of one group, first the online ones then the
-- offline ones. ARGV: deadline, number online, then one member per key.
-- A room's key lives as long as its latest entry, whichever instance wrote
-- it.
local online = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if i <= online then
    redis.call('ZADD', key, ARGV[1], ARGV[i + 2])
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIREAT', key, last[2])
  else
    redis.call('ZREM', key, ARGV[i + 2])
  end
end
return 1
