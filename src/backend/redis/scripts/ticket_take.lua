-- KEYS[1] a WebSocket ticket. Takes it: what it grants, once (nil when
-- gone). A script only so that the deletion goes out with its WAIT
-- (run_kept).
return redis.call('GETDEL', KEYS[1])
