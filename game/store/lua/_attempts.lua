-- Helpers shared by submit.lua and practice.lua: the store prepends this file to each of
-- them when it loads them (Redis scripts cannot call one another).

-- Appends one attempt to a player's list; `keep` (optional) trims it to the newest `keep`.
local function append_attempt(list_key, caption, score, now_ms, seq, keep)
  redis.call('RPUSH', list_key, cjson.encode({caption = caption, score = score, ms = now_ms, seq = seq}))
  if keep then
    redis.call('LTRIM', list_key, -keep, -1)
  end
end

-- Stores `record` as the player's best when q beats the best so far (strictly: an equal
-- score keeps the earlier one). Returns 1 or 0 (improved) and the previous best's q or nil.
local function keep_best(best_key, player, q, record)
  local old = redis.call('HGET', best_key, player)
  local old_q = nil
  if old then old_q = tonumber(cjson.decode(old).q) end
  if old_q == nil or q > old_q then
    redis.call('HSET', best_key, player, cjson.encode(record))
    return 1, old_q
  end
  return 0, old_q
end

