-- The trailing edge of the bar throttle (room_draft.lua): publish the room's bars if a draft is
-- pending and the window has passed. Any web process may call it; one wins each window.
-- KEYS: 1 meta hash, 2 bars hash, 3 bar throttle key, 4 bar pending key
-- ARGV: 1 pub/sub channel, 2 throttle window (ms), 3 room code
-- Returns {0, 0} (nothing pending), {1, 0} (published), {2, ms} (still inside the window, which ends
-- in ms: the caller comes back then rather than asking again every few milliseconds).
if redis.call('EXISTS', KEYS[4]) == 0 then return {0, 0} end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[2])) then
  return {2, math.max(redis.call('PTTL', KEYS[3]), 0)}
end
redis.call('DEL', KEYS[4])
local meta = redis.call('HMGET', KEYS[1], 'phase', 'round')
if meta[1] ~= 'round' then return {0, 0} end
local bars = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do bars[flat[i]] = tonumber(flat[i + 1]) end
redis.call('PUBLISH', ARGV[1], cjson.encode({type = 'room_bars', room = ARGV[3], round = tonumber(meta[2]),
                                             bars = bars}))
return {1, 0}
