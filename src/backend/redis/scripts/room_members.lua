-- A private room's owner and members, read together. KEYS: meta, members.
-- Returns {owner, {user id, record, ...}}, or nil when the room is not
-- private.
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return false end
return {owner, redis.call('HGETALL', KEYS[2])}
