-- KEYS: presence zsets of one group; ARGV[1] now. Drops expired entries
-- first.
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  out[i] = redis.call('ZRANGE', key, 0, -1)
end
return out
