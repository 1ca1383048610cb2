-- Opening a room, the user's part: it heads their list.
-- KEYS[1] the user's rooms; ARGV: room, now, room ttl ms, rooms kept.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
