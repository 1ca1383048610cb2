-- KEYS[1] a wake stream: one poke, read by the tail blocked on it.
redis.call('XADD', KEYS[1], 'MAXLEN', '~', 16, '*', 'w', 1)
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
