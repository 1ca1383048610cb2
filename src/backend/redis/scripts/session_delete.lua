-- KEYS[1] a session (a cookie session's record or a token session); KEYS[2]
-- a key of its slot that never holds anything. Deletes the session. When
-- it is gone already, KEYS[2] is set and deleted at once: a change that
-- leaves nothing but is replicated, so that the WAIT after this call
-- covers an earlier deletion of the session too (another request's, which
-- no replica had confirmed). A script so that it goes out with its WAIT
-- (run_kept). Returns how many sessions were deleted (0 or 1).
if redis.call('DEL', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[2])
return 0
