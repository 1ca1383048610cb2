-- KEYS[1] the user's security log (a list, newest first); ARGV: the entry
-- (JSON), entries kept, how long the log lives after this write (ms).
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
