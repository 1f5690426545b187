-- Records one ranked submission atomically (see game/store/__init__.py for the key layout;
-- _attempts.lua is prepended).
-- KEYS: 1 count hash, 2 best hash, 3 puzzle board zset, 4 day seq counter,
--       5 day totals hash, 6 day board zset, 7 day log stream, 8 player's attempts list,
--       9 player's days-played zset (date -> days since 1970-01-01: the history page's index)
-- ARGV: 1 player id, 2 q (score in micro-units, integer), 3 score (exact text),
--       4 caption, 5 time ms, 6 max submissions, 7 puzzle id,
--       8 the puzzle's day (days since 1970-01-01, UTC),
--       9 today's day number from a pinned test clock, or "" for the Redis server's TIME,
--       10 the puzzle's day as YYYY-MM-DD
-- Returns {"day", today} when the puzzle's day is not today by the server's clock (the one
-- clock every process shares, so a web process with a skewed clock cannot record into
-- yesterday or tomorrow), {"cap", count} when the cap is reached (nothing written either way), else
-- {"ok", count, seq, improved, best_score_text, rank0}.
--
-- Ties go to the earlier submission: board scores are composite integers,
-- q * 2^32 + (2^32 - 1 - seq) per puzzle and total * 2^29 + (2^29 - 1 - seq)
-- per day, where seq counts the day's submissions. Equal q ranks the smaller
-- seq first; every value stays below 2^53, so doubles hold it exactly.
local player, q, score, caption = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now_ms, max_subs, puzzle = ARGV[5], tonumber(ARGV[6]), ARGV[7]

local today = tonumber(ARGV[9])
if today == nil then
  today = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
end
if tonumber(ARGV[8]) ~= today then
  return {'day', today}
end

local count = tonumber(redis.call('HGET', KEYS[1], player) or '0')
if count >= max_subs then
  return {'cap', count}
end
count = redis.call('HINCRBY', KEYS[1], player, 1)
local seq = redis.call('INCR', KEYS[4])

redis.call('XADD', KEYS[7], '*', 'player', player, 'puzzle', puzzle, 'caption', caption,
           'score', score, 'q', ARGV[2], 'seq', seq, 'ms', now_ms)
append_attempt(KEYS[8], caption, score, now_ms, tostring(seq), nil)
redis.call('ZADD', KEYS[9], ARGV[8], ARGV[10])

local improved, old_q = keep_best(KEYS[2], player, q, {q = ARGV[2], score = score, caption = caption,
                                                       seq = tostring(seq), ms = now_ms})
if improved == 1 then
  redis.call('ZADD', KEYS[3], string.format('%.0f', q * 4294967296 + (4294967295 - seq)), player)
  local total = tonumber(redis.call('HGET', KEYS[5], player) or '0') - (old_q or 0) + q
  redis.call('HSET', KEYS[5], player, string.format('%.0f', total))
  redis.call('ZADD', KEYS[6], string.format('%.0f', total * 536870912 + (536870911 - seq)), player)
end
local best = cjson.decode(redis.call('HGET', KEYS[2], player))
local rank0 = redis.call('ZREVRANK', KEYS[3], player)
return {'ok', count, seq, improved, best.score, rank0}
