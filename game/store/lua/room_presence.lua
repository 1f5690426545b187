-- One socket of a player opened (+1) or closed (-1) in a room; keeps the room alive while anyone
-- is connected and lets it expire once nobody is (game/store/rooms.py).
-- KEYS: 1 meta hash, 2 online hash, then every key of the room (for their expiry)
-- ARGV: 1 player id, 2 delta (+1 | -1), 3 now (ms), 4 expiry while someone is online (s),
--       5 expiry once empty (s)
-- Returns the number of sockets open in the room after the change (-1: no such room).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], tonumber(ARGV[2]))
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
local host = redis.call('HGET', KEYS[1], 'host')
if host == ARGV[1] then
  -- The host's last socket closing starts the hand-on grace; a reconnect within it keeps the role.
  if n <= 0 then redis.call('HSET', KEYS[1], 'host_left', ARGV[3]) else redis.call('HDEL', KEYS[1], 'host_left') end
end
local total = 0
local counts = redis.call('HVALS', KEYS[2])
for _, c in ipairs(counts) do total = total + tonumber(c) end
local ttl = tonumber(ARGV[4])
if total <= 0 then ttl = tonumber(ARGV[5]) end
for i = 1, #KEYS do
  if i ~= 2 or total > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return total
