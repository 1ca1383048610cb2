-- Opening a room, the room's part. KEYS: the room's active key, its
-- stream; ARGV: now, room ttl ms.
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', until_ms)
redis.call('PEXPIREAT', KEYS[2], until_ms)
return 1
