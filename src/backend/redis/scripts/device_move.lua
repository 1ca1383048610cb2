-- KEYS[1] the user's session descriptors; ARGV: the session's old id, its
-- new id. Moves the descriptor unchanged; 1 when there was one.
local descriptor = redis.call('HGET', KEYS[1], ARGV[1])
if not descriptor then return 0 end
if ARGV[1] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[2], descriptor)
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
