-- The trailing edge of the bar throttle (room_draft.lua): publish the room's bars if a draft is
-- pending and the window has passed. Any web process may call it; one wins each window.
-- KEYS: 1 meta hash, 2 bars hash, 3 bar throttle key, 4 bar pending key
-- ARGV: 1 pub/sub channel, 2 throttle window (ms), 3 room code
-- Returns 0 (nothing pending), 1 (published), 2 (still inside the window: try again shortly).
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[2])) then return 2 end
redis.call('DEL', KEYS[4])
local meta = redis.call('HMGET', KEYS[1], 'phase', 'round')
if meta[1] ~= 'round' then return 0 end
local bars = {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do bars[flat[i]] = tonumber(flat[i + 1]) end
redis.call('PUBLISH', ARGV[1], cjson.encode({type = 'room_bars', room = ARGV[3], round = tonumber(meta[2]),
                                             bars = bars}))
return 1
