-- What a room is now, for one user (Rooms::state; the index of a user's
-- private rooms is checked with it too). KEYS: the room's meta, members,
-- active key. ARGV: user id. Returns {0 free | 1 public | 2 private, not
-- a member | 3 private, a member | 4 private, the owner, when the user
-- joined (ms; 0 for a non-member)}.
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local member = redis.call('HGET', KEYS[2], ARGV[1])
  if not member then return {2, 0} end
  local joined = tonumber(string.match(member, '^%d+:(%d+):'))
  if owner == ARGV[1] then return {4, joined} end
  return {3, joined}
end
return {redis.call('EXISTS', KEYS[3]), 0}
