-- KEYS: the user's read hash, the user's rooms zset, their private rooms
-- zset, their direct conversations zset.
-- ARGV: room, ms, seq, room ttl ms, markers kept.
-- Moves the marker only forward (ids compare as (ms, seq); both fit a Lua
-- number exactly). Past the cap, markers of rooms no longer in the user's
-- list (opened, private, direct) go. Returns 1 when it moved.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
if cur then
  local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
  cms, cseq = tonumber(cms), tonumber(cseq)
  if cms and (cms > ms or (cms == ms and cseq >= seq)) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '-' .. ARGV[3])
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then
  for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not redis.call('ZSCORE', KEYS[2], room) and not redis.call('ZSCORE', KEYS[3], room)
        and not redis.call('ZSCORE', KEYS[4], room) then
      redis.call('HDEL', KEYS[1], room)
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
