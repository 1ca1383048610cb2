-- An append, step 2 of 3 (docs/cluster.md, "Appending"): the sender.
-- KEYS: rate bucket, new-room counter. ARGV: now, rate per s, burst, the
-- room is new (1/0), new rooms allowed, new-room window ms.
-- Returns 1 (go on), 2 over the rate (nothing written), 3 over the new-room
-- quota (the attempt is counted, the token is not taken). The bucket is
-- backend::rules::UserRate::take.
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
if tokens < 1 then return 2 end
if ARGV[4] == '1' then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
  if n > tonumber(ARGV[5]) then return 3 end
end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 'at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return 1
