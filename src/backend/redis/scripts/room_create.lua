-- Makes a private room, unless the name is taken whatever its kind: a
-- public room in use (its active key) or a private room (its meta).
-- KEYS: meta, members, left, stream, active, presence. ARGV: owner id,
-- owner name, now (ms), the owner's token (private_reserve). A member is
-- `<n>:<joined_at>:<token>:<name>`, n counting the room's joins.
-- Returns 1 made, 0 the name is taken (nothing written).
if redis.call('EXISTS', KEYS[1], KEYS[5]) > 0 then return 0 end
-- What a public room of this name that expired may have left behind.
redis.call('DEL', KEYS[3], KEYS[4], KEYS[6])
redis.call('HSET', KEYS[1], 'kind', 'private', 'owner', ARGV[1], 'created_at', ARGV[3], 'joins', 1)
redis.call('HSET', KEYS[2], ARGV[1], '1:' .. ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[2])
return 1
