-- Removes a member from a private room: `by` removes themselves, or, as
-- the owner, anyone. The owner's leaving hands the room to the
-- longest-standing member (the lowest n); the last member's deletes the
-- room and its history. KEYS: meta, members, left, stream, active,
-- presence. ARGV: by, user. Returns {code, the removed membership's
-- token, the new owner or '', deleted 1/0}: code 1 removed, 2 no such
-- room or either is not a member, 3 a member removing someone else.
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return {2, '0', '', 0} end
local member = redis.call('HGET', KEYS[2], ARGV[2])
if not member or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {2, '0', '', 0} end
if ARGV[1] ~= ARGV[2] and owner ~= ARGV[1] then return {3, '0', '', 0} end
local token = string.match(member, '^%d+:%d+:(%d+):')
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  return {1, token, '', 1}
end
-- An add of this user reserved before now is too late (room_add).
if tonumber(token) > tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[3], ARGV[2], token)
end
if owner ~= ARGV[2] then return {1, token, '', 0} end
local heir, lowest = nil, nil
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local n = tonumber(string.match(all[i + 1], '^(%d+):'))
  if not lowest or n < lowest then heir, lowest = all[i], n end
end
redis.call('HSET', KEYS[1], 'owner', heir)
return {1, token, heir, 0}
