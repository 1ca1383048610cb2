-- A resend of a stored message, before it is acknowledged again: a write
-- that changes nothing (the dedupe key keeps its expiry) but is replicated,
-- so that the WAIT after it covers the first copy, which came earlier in the
-- replication stream. KEYS[1] dedupe key. Returns the stored id, or '' if
-- it expired meanwhile.
local seen = redis.call('GET', KEYS[1])
if not seen then return '' end
redis.call('PEXPIREAT', KEYS[1], redis.call('PEXPIRETIME', KEYS[1]))
return seen
