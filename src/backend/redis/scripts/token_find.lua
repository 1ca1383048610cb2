-- Single Redis only (the session key is in another slot than the
-- pointer). KEYS[1] the sid pointer. Returns {id, record JSON, expiry ms}
-- of the live token session it names, or nil.
local id = redis.call('GET', KEYS[1])
if not id then return nil end
local record = redis.call('GET', id)
if not record then return nil end
return {id, record, redis.call('PEXPIRETIME', id)}
