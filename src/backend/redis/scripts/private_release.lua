-- Gives back what private_reserve took when the room was not written, or
-- drops an index entry after its membership was removed. KEYS: the user's
-- index, their new-room counter. ARGV: room, token ('0': keep the entry),
-- give back the new-room charge (1/0). The entry goes only while it holds
-- `token`: a newer add's reservation stays.
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if ARGV[3] == '1' and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
