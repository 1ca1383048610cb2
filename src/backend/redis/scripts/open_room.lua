-- Opening a room, the room's part. KEYS: the room's active key, its
-- stream, its meta. ARGV: now, room ttl ms. Returns 1, or 0 writing
-- nothing when the name is a private room's.
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', until_ms)
redis.call('PEXPIREAT', KEYS[2], until_ms)
return 1
