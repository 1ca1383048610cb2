-- KEYS: the user's session descriptors, the user's session index. ARGV:
-- now (ms), limit. Returns {ids, descriptors}: the indexed sessions that
-- end after now, the `limit` that end last, and each one's descriptor
-- (nil: none).
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local descriptors = {}
for i, id in ipairs(ids) do
  descriptors[i] = redis.call('HGET', KEYS[1], id)
end
return {ids, descriptors}
