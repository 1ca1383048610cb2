-- An append, step 1 of 3 (docs/cluster.md, "Appending": a room's keys
-- and its sender's keys are in different slots): the room, read only.
-- KEYS: the room's active key, then the dedupe key if the message has a
-- client_id. Returns {id of the stored first copy or '', room exists 1/0}.
if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {seen, 1} end
end
return {'', redis.call('EXISTS', KEYS[1])}
