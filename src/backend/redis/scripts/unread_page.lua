-- KEYS: a room's messages stream.
-- ARGV: start (an exclusive "(id"), count, the reader's mention ("@name",
-- lowercase).
-- XRANGE start + COUNT count, as an unread count needs it: each entry's id,
-- sender and time, and its body only when it may mention the reader (it
-- holds ARGV[3] ignoring ASCII case, which every mention of the reader
-- does: names are ASCII); any other body comes back empty. The caller
-- applies the mention rule to the bodies that come back.
local out = {}
for i, entry in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local fields, kept = entry[2], {}
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    if name == 'body' and not string.find(string.lower(value), ARGV[3], 1, true) then value = '' end
    if name ~= 'client_id' then
      kept[#kept + 1] = name
      kept[#kept + 1] = value
    end
  end
  out[i] = {entry[1], kept}
end
return out
