-- Adds a member to a private room, after private_reserve made room for it
-- in the user's index (docs/cluster.md, "Private rooms"). KEYS: meta,
-- members, left. ARGV: by (who must be a member), user id, user name, now
-- (ms), the user's token, members allowed. Returns {code, fence}: code 1
-- added, 2 already a member (the record keeps the newest token), 3 no
-- such room or `by` is not a member, 4 the room is full, 5 a removal of
-- the user came after this token was reserved (nothing written; reserve
-- again, above `fence`).
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {3, 0} end
local token = tonumber(ARGV[5])
local current = redis.call('HGET', KEYS[2], ARGV[2])
if current then
  local n, joined, had, name = string.match(current, '^(%d+):(%d+):(%d+):(.*)$')
  if token > tonumber(had) then
    redis.call('HSET', KEYS[2], ARGV[2], n .. ':' .. joined .. ':' .. ARGV[5] .. ':' .. name)
  end
  return {2, 0}
end
local fence = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
if token <= fence then return {5, fence} end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then return {4, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'joins', 1)
-- Joins are ordered by n; their times must not run backwards in that
-- order, though `now` was read by an instance before this ran (a later
-- add can carry an earlier clock, or another instance's slower one).
local last = tonumber(redis.call('HGET', KEYS[1], 'joined_last') or redis.call('HGET', KEYS[1], 'created_at') or '0')
local at = math.max(tonumber(ARGV[4]), last)
redis.call('HSET', KEYS[1], 'joined_last', at)
redis.call('HSET', KEYS[2], ARGV[2], n .. ':' .. string.format('%d', at) .. ':' .. ARGV[5] .. ':' .. ARGV[3])
return {1, 0}
