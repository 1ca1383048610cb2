-- An append in one call, on a single Redis: there the room's keys and its
-- sender's are on one server, while on a cluster they are in two slots
-- and the three steps go one by one (docs/cluster.md, "Appending"). Each
-- step's own script (append_check, append_take, append_store) follows
-- this file as a function of its KEYS and ARGV (scripts.rs puts it
-- together), and runs here in turn with what the caller does between
-- the steps.
-- KEYS: append_check's, append_take's, append_store's, in that order.
-- ARGV: how many keys append_check takes, how many append_store takes,
-- the room is direct (1/0), the room is the lobby (1/0), then the
-- arguments of append_check (1), append_take (6) and append_store (11);
-- take's "the room is new" and store's kind are decided here, from what
-- append_check found.
-- Returns {'seen', id} when the client_id was stored before (the caller
-- confirms the resend as the steps do), {'refused'} when the sender may
-- not write here, {'throttled'} over the rate, {'quota'} over the new-room
-- quota, else append_store's answer.
local check, take, store

local function part(list, from, count)
  local out = {}
  for i = 1, count do out[i] = list[from + i - 1] end
  return out
end

local function main()
  local check_keys, store_keys = tonumber(ARGV[1]), tonumber(ARGV[2])
  local direct, lobby = ARGV[3] == '1', ARGV[4] == '1'
  local found = check(part(KEYS, 1, check_keys), part(ARGV, 5, 1))
  local seen, exists, kind = found[1], found[2], found[3]
  if kind == 2 and not direct then return {'refused'} end
  if seen ~= '' then return {'seen', seen} end
  local take_args = part(ARGV, 6, 6)
  take_args[4] = (exists == 0 and not lobby) and '1' or '0'
  local taken = take(part(KEYS, check_keys + 1, 2), take_args)
  if taken == 2 then return {'throttled'} end
  if taken == 3 then return {'quota'} end
  local store_args = part(ARGV, 12, 11)
  if direct then
    store_args[10] = 'direct'
  elseif kind == 0 then
    store_args[10] = 'public'
  else
    store_args[10] = 'private'
  end
  return store(part(KEYS, check_keys + 3, store_keys), store_args)
end
