-- KEYS: the user's mention inbox. ARGV: '<room> <id>', notes kept, room ttl ms.
-- The newest note first; past the cap the oldest go, and the inbox goes a
-- room lifetime after its newest note.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
