-- Makes room in a user's index of private rooms before the room is
-- written (docs/cluster.md, "Private rooms"): its size is what
-- MAX_PRIVATE_ROOMS_PER_USER bounds. KEYS: the user's index, its token
-- counter, their new-room counter. ARGV: room, rooms allowed, charge the
-- new-room quota (1/0), new rooms allowed, quota window ms, a token the
-- new one must exceed. Returns {code, token, ms left in the quota window}:
-- code 0 too many rooms, 1 over the new-room quota (nothing written for
-- either), 2 reserved anew, 3 the room was listed already (the entry takes
-- the new token).
local listed = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not listed and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {0, 0, 0} end
if ARGV[3] == '1' then
  -- Counted only when within the quota: a refused private room costs nothing.
  if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[4]) then
    return {1, 0, redis.call('PTTL', KEYS[3])}
  end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
end
local token = redis.call('INCR', KEYS[2])
if token <= tonumber(ARGV[6]) then
  token = tonumber(ARGV[6]) + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('ZADD', KEYS[1], token, ARGV[1])
if listed then return {3, token, 0} end
return {2, token, 0}
