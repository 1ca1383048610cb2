-- An append, step 1 of 3 (docs/cluster.md, "Appending": a room's keys
-- and its sender's keys are in different slots): the room, read only.
-- KEYS: the room's active key, meta, members, then the dedupe key if the
-- message has a client_id. ARGV: the sender's id. Returns {id of the
-- stored first copy or '', room exists 1/0, kind}: kind 0 public (or
-- free), 1 private and the sender a member, 2 private and not (nothing
-- else is looked at).
local kind = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return {'', 1, 2} end
  kind = 1
end
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {seen, 1, kind} end
end
if kind == 1 then return {'', 1, kind} end
return {'', redis.call('EXISTS', KEYS[1]), kind}
