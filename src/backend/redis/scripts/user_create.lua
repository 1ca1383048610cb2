-- KEYS[1] a user's record (by folded name); ARGV[1] the record (JSON).
-- Creates it unless the name is taken: 1 created, 0 taken. A script only
-- so that the write goes out with its WAIT (run_kept).
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
return 0
