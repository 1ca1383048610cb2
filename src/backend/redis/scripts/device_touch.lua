-- KEYS[1] the user's session descriptors; ARGV: session id, at (ms),
-- granularity (ms). Rewrites the descriptor's last_active_at to `at` when
-- it is older than at - granularity. Returns 1 when it did, 0 when not or
-- when the session has no descriptor.
local json = redis.call('HGET', KEYS[1], ARGV[1])
if not json then return 0 end
local descriptor = cjson.decode(json)
local at = tonumber(ARGV[2])
if (tonumber(descriptor['last_active_at']) or 0) >= at - tonumber(ARGV[3]) then return 0 end
descriptor['last_active_at'] = at
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(descriptor))
return 1
