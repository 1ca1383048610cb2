-- KEYS[1] an invite (by its code's hash); ARGV: uses, uses left,
-- created_at, expires_at, by (a user id, '' for an operator), when to
-- forget it (ms). 1 when made, 0 when the code exists already.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'uses', ARGV[1], 'left', ARGV[2], 'created_at', ARGV[3],
  'expires_at', ARGV[4], 'by', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return 1
