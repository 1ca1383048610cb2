-- KEYS[1] an invite: one use back, never beyond the uses it was made with.
-- 1 when given back, 0 when the code is gone or has every use.
local v = redis.call('HMGET', KEYS[1], 'uses', 'left')
if not v[1] or tonumber(v[2]) >= tonumber(v[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'left', 1)
return 1
