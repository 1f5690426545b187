-- Records one practice submission (a past day): the player's own attempts and
-- practice best only. Ranked boards, totals and the day's log are never touched.
-- KEYS: 1 practice best hash, 2 player's practice attempts list
-- ARGV: 1 player id, 2 q (micro-units), 3 score text, 4 caption, 5 time ms, 6 attempts kept
-- Returns {improved, best_score_text, attempts_count}. (_attempts.lua is prepended.)
local player, q, score, caption, now_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
append_attempt(KEYS[2], caption, score, now_ms, '0', tonumber(ARGV[6]))
local improved = keep_best(KEYS[1], player, q, {q = ARGV[2], score = score, caption = caption, ms = now_ms})
local best = cjson.decode(redis.call('HGET', KEYS[1], player))
return {improved, best.score, redis.call('LLEN', KEYS[2])}
