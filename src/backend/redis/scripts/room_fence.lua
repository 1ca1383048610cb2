-- Before a stale entry of a user's index of private rooms is dropped, the
-- room's side (docs/cluster.md, "Private rooms"). KEYS: meta, members,
-- left. ARGV: user id, the entry's token. Returns 0 when the user is a
-- member after all (the entry stays); else 1, and an add reserved with
-- this token or earlier that has not landed yet never will (room_add
-- finds the fence).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') then
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  end
end
return 1
