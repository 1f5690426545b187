-- Sets a player's nickname and claims its confusable skeleton in one step, so
-- two processes saving look-alike names at once cannot both win.
-- KEYS: 1 cap:nicknames (skeleton -> player id), 2 the player's hash
-- ARGV: 1 player id, 2 skeleton, 3 cleaned nickname, 4 created time (for a new player)
-- Returns 1 when saved, 0 when another player holds the skeleton (nothing is changed then).
local player, key = ARGV[1], ARGV[2]
local holder = redis.call('HGET', KEYS[1], key)
if holder and holder ~= player then
  return 0
end
-- A rename frees the old name, but only if this player really holds it.
local old = redis.call('HGET', KEYS[2], 'nickname_key')
if old and old ~= key and redis.call('HGET', KEYS[1], old) == player then
  redis.call('HDEL', KEYS[1], old)
end
redis.call('HSET', KEYS[1], key, player)
redis.call('HSETNX', KEYS[2], 'created', ARGV[4])
redis.call('HSET', KEYS[2], 'nickname', ARGV[3], 'nickname_key', key)
return 1
