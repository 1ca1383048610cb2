-- A user's direct conversations, most recent first. KEYS: the user's
-- direct list, its names. ARGV: how many (at least 1). Returns
-- {room, the other member's name, ...}.
local out = {}
for _, room in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  out[#out + 1] = room
  out[#out + 1] = redis.call('HGET', KEYS[2], room) or ''
end
return out
