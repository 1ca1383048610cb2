-- KEYS: the user's session descriptors (hash), the user's session index.
-- ARGV: session id, descriptor JSON, when the session ends at the latest
-- (ms). Writes the descriptor, drops those of sessions no longer indexed
-- (never this one), and keeps the hash until its last session ends.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if id ~= ARGV[1] and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('HDEL', KEYS[1], id)
  end
end
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
return 1
