-- KEYS[1] a token session's key. Returns {record JSON, expiry ms} or nil.
local record = redis.call('GET', KEYS[1])
if not record then return nil end
return {record, redis.call('PEXPIRETIME', KEYS[1])}
