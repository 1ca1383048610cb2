-- KEYS[1] the user's security log; ARGV: address, at (ms), burst (ms),
-- entries kept, how long the log lives after this write (ms), the entry to
-- add (JSON, count 1). When the newest entry is a failed sign-in from the
-- same address whose burst began within `burst` before `at`, it counts one
-- more instead (and its `at` moves to the latest). Returns its count.
local at = tonumber(ARGV[2])
local head = redis.call('LINDEX', KEYS[1], 0)
local entry = head and cjson.decode(head)
local count = 1
if entry and entry['kind'] == 'sign_in_failed' and entry['address'] == ARGV[1]
    and (tonumber(entry['since']) or 0) > at - tonumber(ARGV[3]) then
  count = (tonumber(entry['count']) or 1) + 1
  entry['count'] = count
  if at > (tonumber(entry['at']) or 0) then entry['at'] = at end
  redis.call('LSET', KEYS[1], 0, cjson.encode(entry))
else
  redis.call('LPUSH', KEYS[1], ARGV[6])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return count
