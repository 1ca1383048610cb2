-- One side of a direct conversation that has a message: it heads the
-- user's list. KEYS: the user's direct list, its names. ARGV: room, the
-- other member's name, when (ms). Only a later time moves it.
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
