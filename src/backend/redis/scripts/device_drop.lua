-- KEYS: the user's session descriptors, the user's session index. ARGV:
-- ids of sessions found gone from the session store: out of both.
for _, id in ipairs(ARGV) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return 1
