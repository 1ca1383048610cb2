-- KEYS[1] counter: one back, never below zero, window kept
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1
