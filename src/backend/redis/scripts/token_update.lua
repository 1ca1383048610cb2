-- KEYS[1] a token session's key; ARGV: expected current refresh hash, new
-- record JSON, new expiry (ms). A compare-and-set: 1 when replaced, 0 when
-- the session is gone or already rotated.
local record = redis.call('GET', KEYS[1])
if not record then return 0 end
if cjson.decode(record)['refresh']['current'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
