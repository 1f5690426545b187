-- The commit step of `targets import`: staged keys become the live ones, in one atomic script.
-- KEYS: n staging keys, then the n live names they take, then the old live keys to delete.
-- ARGV: 1 n, 2 a key whose live set is merged with (not replaced by) its staged set (cap:models).
-- Everything is checked before the first write, so an error reply means nothing changed;
-- once writing has begun, nothing here can fail (RENAME of a key checked to exist, DEL).
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('IMPORT staging key ' .. KEYS[i] .. ' is missing (expired?); nothing changed')
  end
end
for i = 2 * n + 1, #KEYS do
  redis.call('DEL', KEYS[i])
end
for i = 1, n do
  local staged, live = KEYS[i], KEYS[n + i]
  if live == ARGV[2] and redis.call('TYPE', live).ok == 'set' then
    redis.call('SUNIONSTORE', live, live, staged)
    redis.call('DEL', staged)
  else
    redis.call('RENAME', staged, live)
    redis.call('PERSIST', live)  -- staging keys carry a TTL so an interrupted import cleans itself up
  end
end
return n
