-- An append, step 3 of 3 (docs/cluster.md, "Appending"): the room again.
-- KEYS: stream, active key, then the dedupe key if any. ARGV: maxlen, user,
-- body, sent_at, client_id, show client_id (1/0), dedupe secs, now, room
-- ttl ms. Returns {id, 1} stored, {id, 0} a resend stored meanwhile.
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    -- A write that changes nothing, for the WAIT after it.
    redis.call('PEXPIREAT', KEYS[3], redis.call('PEXPIRETIME', KEYS[3]))
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
if KEYS[3] then redis.call('SET', KEYS[3], id, 'EX', ARGV[7]) end
-- The stream expires exactly when the room stops existing.
local until_ms = tonumber(ARGV[8]) + tonumber(ARGV[9])
redis.call('PEXPIREAT', KEYS[1], until_ms)
redis.call('SET', KEYS[2], ARGV[8], 'PXAT', until_ms)
return {id, 1}
