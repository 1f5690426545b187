-- Records one practice submission (a past day): the player's own attempts and
-- practice best only. Ranked boards, totals and the day's log are never touched.
-- KEYS: 1 practice best hash, 2 player's practice attempts list
-- ARGV: 1 player id, 2 q (micro-units), 3 score text, 4 caption, 5 time ms, 6 attempts kept
-- Returns {improved, best_score_text, attempts_count}.
local player, q, score, caption, now_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
redis.call('RPUSH', KEYS[2], cjson.encode({caption = caption, score = score, ms = now_ms, seq = '0'}))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
local improved = 0
local old = redis.call('HGET', KEYS[1], player)
if not old or q > tonumber(cjson.decode(old).q) then
  improved = 1
  redis.call('HSET', KEYS[1], player, cjson.encode({q = ARGV[2], score = score, caption = caption, ms = now_ms}))
end
local best = cjson.decode(redis.call('HGET', KEYS[1], player))
return {improved, best.score, redis.call('LLEN', KEYS[2])}
