-- KEYS[1] an invite; ARGV[1] now (ms). Takes one use. Returns {'spent',
-- uses, left, created_at, expires_at, by} (left after this one), or
-- {'unknown'}, {'expired'}, {'used_up'}.
local v = redis.call('HMGET', KEYS[1], 'uses', 'left', 'created_at', 'expires_at', 'by')
if not v[1] then return {'unknown'} end
if tonumber(v[4]) <= tonumber(ARGV[1]) then return {'expired'} end
if tonumber(v[2]) <= 0 then return {'used_up'} end
local left = redis.call('HINCRBY', KEYS[1], 'left', -1)
return {'spent', v[1], tostring(left), v[3], v[4], v[5]}
