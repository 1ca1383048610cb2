-- KEYS[1] a user's record; ARGV: the user's id ('' for whoever has the
-- name), a field, its new value as JSON. Sets that one field and leaves the
-- others as they are; returns the record as written, or nil when there is
-- no such record (or it holds another id).
local record = redis.call('GET', KEYS[1])
if not record then return false end
local user = cjson.decode(record)
if ARGV[1] ~= '' and user['id'] ~= ARGV[1] then return false end
user[ARGV[2]] = cjson.decode(ARGV[3])
record = cjson.encode(user)
redis.call('SET', KEYS[1], record, 'KEEPTTL')
return record
