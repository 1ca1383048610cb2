-- KEYS[1] a shared secret; KEYS[2] the values retired from it (a sorted set:
-- value -> until, ms). ARGV[1] this instance's value; ARGV[2] what to keep of
-- it if another is current ('' for nothing), ARGV[3] until when; ARGV[4] now.
-- Returns {current, retired value, its until, ...}: those not yet past.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  current = ARGV[1]
elseif current ~= ARGV[1] and ARGV[2] ~= '' then
  local kept = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if not kept or tonumber(kept) < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local retired = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf', 'WITHSCORES')
if #retired > 0 then
  -- Kept as long as its longest-lived value, and no longer.
  redis.call('PEXPIREAT', KEYS[2], retired[#retired])
end
local reply = {current}
for _, v in ipairs(retired) do reply[#reply + 1] = v end
return reply
