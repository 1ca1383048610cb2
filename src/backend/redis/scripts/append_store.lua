-- An append, step 3 of 3 (docs/cluster.md, "Appending"): the room again.
-- KEYS: stream, active key, meta, members, then the dedupe key if any.
-- ARGV: maxlen, user, body, sent_at, client_id, show client_id (1/0),
-- dedupe secs, now, room ttl ms, the room's kind as step 1 found it
-- (public, private, direct), the sender's id. Returns {id, 1} stored,
-- {id, 0} a resend stored meanwhile, {'', 2} the sender may not write here
-- (the name became a private room's, or they left it): nothing stored.
local kind = ARGV[10]
if kind == 'public' and redis.call('EXISTS', KEYS[3]) == 1 then return {'', 2} end
if kind == 'private' and redis.call('HEXISTS', KEYS[4], ARGV[11]) == 0 then return {'', 2} end
if KEYS[5] then
  local seen = redis.call('GET', KEYS[5])
  if seen then
    -- A write that changes nothing, for the WAIT after it.
    redis.call('PEXPIREAT', KEYS[5], redis.call('PEXPIRETIME', KEYS[5]))
    return {seen, 0}
  end
end
local id
if ARGV[6] == '1' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4], 'client_id', ARGV[5])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4])
end
if KEYS[5] then redis.call('SET', KEYS[5], id, 'EX', ARGV[7]) end
if kind == 'public' then
  -- The stream expires exactly when the room stops existing.
  local until_ms = tonumber(ARGV[8]) + tonumber(ARGV[9])
  redis.call('PEXPIREAT', KEYS[1], until_ms)
  redis.call('SET', KEYS[2], ARGV[8], 'PXAT', until_ms)
else
  -- Private and direct rooms never expire. A private room exists by its
  -- meta (an active key would make it look public); a direct one by its
  -- first message.
  redis.call('PERSIST', KEYS[1])
  if kind == 'direct' then redis.call('SET', KEYS[2], ARGV[8]) end
end
return {id, 1}
