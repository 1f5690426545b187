-- A draft or a lock-in of one player in a room's running round, atomically with the round's state
-- (game/store/rooms.py has the key layout). The round, its deadline and the player's seat are
-- checked against the room's own record here, so a draft racing the round's end, or sent for an
-- old round, can never count.
-- KEYS: 1 meta hash, 2 members hash, 3 round hash, 4 bars hash, 5 bar throttle key, 6 bar pending key
-- ARGV: 1 player id, 2 round number, 3 score (text), 4 caption, 5 now (ms, the store's clock),
--       6 "1" to lock in, 7 pub/sub channel, 8 throttle window (ms), 9 room code,
--       10 the target id the caption was scored against ('' to skip that check)
-- Returns {"ok", sent, ms} (sent: 1 when the bars were published now, 0 when a flush is pending,
-- ms: then when the window ends),
-- or {code, detail}: "phase" (no round running; detail '' when there is no room at all), "stale"
-- (another round runs), "moved" (the round's picture is not ARGV[10]: a new game drew new pictures
-- since the web process read them, so the score is against the wrong picture and nothing is recorded),
-- "over" (past the deadline), "not_member", "not_playing" (spectator or late joiner), "locked".
local meta = redis.call('HMGET', KEYS[1], 'phase', 'round', 'ends_at', 'pictures')
if meta[1] ~= 'round' then return {'phase', meta[1] or ''} end
local round = tonumber(ARGV[2])
if tonumber(meta[2]) ~= round then return {'stale', meta[2]} end
if ARGV[10] ~= '' and cjson.decode(meta[4])[round] ~= ARGV[10] then return {'moved', ''} end
local now = tonumber(ARGV[5])
if now >= tonumber(meta[3]) then return {'over', meta[3]} end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'not_member', ''} end
local member = cjson.decode(raw)
if member.role ~= 'player' or tonumber(member.from) > round then return {'not_playing', tostring(member.from)} end
local score = tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[3], ARGV[1])
if current then
  current = cjson.decode(current)
  if current.locked then return {'locked', tostring(current.score)} end
end
-- A locked caption counts whatever its score; otherwise the round keeps the best draft.
if ARGV[6] == '1' or not current or score > tonumber(current.score) then
  redis.call('HSET', KEYS[3], ARGV[1], cjson.encode({score = ARGV[3], caption = ARGV[4], ms = now,
                                                     locked = (ARGV[6] == '1')}))
end
redis.call('HSET', KEYS[4], member.pub, ARGV[3])
-- Throttle: at most one bars message per window per room, whichever process scored the draft.
-- A draft inside the window leaves a pending mark that a web process's ticker flushes later.
if redis.call('SET', KEYS[5], '1', 'NX', 'PX', tonumber(ARGV[8])) then
  redis.call('DEL', KEYS[6])
  local bars = {}
  local flat = redis.call('HGETALL', KEYS[4])
  for i = 1, #flat, 2 do bars[flat[i]] = tonumber(flat[i + 1]) end
  redis.call('PUBLISH', ARGV[7], cjson.encode({type = 'room_bars', room = ARGV[9], round = round, bars = bars}))
  return {'ok', 1}
end
redis.call('SET', KEYS[6], '1', 'PX', 60000)
return {'ok', 0, math.max(redis.call('PTTL', KEYS[5]), 0)}
