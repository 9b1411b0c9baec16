-- _dedup: a queue's deduplication keys, shared by the scripts that take and release them
-- (scripts.py loads it after _fifo.lua). The callers pass these keys, all of the queue's slot:
--   dedup       {ns:Q}:dedup        hash  dedup key -> "message_id|mode|expires_ms" of the message holding it
--   dedup_exp   {ns:Q}:dedup.exp    zset  the same keys by expiry (ms), so that expired ones are swept
--   deliveries  {ns:Q}:deliveries   hash  "<id>:dedup" -> "message_id|key": the key a stored message holds
--                                         (until_done and until_start keys; a window key is never released)
-- Modes: "d" until_done (released when its message is acked or dead-lettered), "s" until_start
-- (released when its message starts running), "w" window (held until it expires). Every key
-- expires after its ttl whatever happens: nothing holds a key forever. A retry on the same
-- queue carries the reference to its new id; a redelivery keeps its id: neither is a duplicate.

local DEDUP_SWEEP = 100 -- expired keys dropped per call at most

-- The message_id holding `key` now, or nil when it is free (never taken, released or expired).
local function dedup_holder(dedup, key, now)
  local record = redis.call("hget", dedup, key)
  if not record then
    return nil
  end
  local first = string.find(record, "|", 1, true)
  local second = string.find(record, "|", first + 1, true)
  if tonumber(string.sub(record, second + 1)) <= now then
    return nil
  end
  return string.sub(record, 1, first - 1)
end

-- Take `key` for the message `message_id`, stored as `id`, in `mode` for `ttl_ms`.
local function dedup_take(dedup, dedup_exp, deliveries, key, message_id, id, mode, ttl_ms, now)
  redis.call("hset", dedup, key, message_id .. "|" .. mode .. "|" .. (now + ttl_ms))
  redis.call("zadd", dedup_exp, now + ttl_ms, key)
  if mode ~= "w" then
    redis.call("hset", deliveries, id .. ":dedup", message_id .. "|" .. key)
  end
end

-- Release the key that the stored message `id` holds, if it still holds it (it may have
-- expired and been taken by another message since). Returns the key released, or false.
local function dedup_release(dedup, dedup_exp, deliveries, id)
  local ref = redis.call("hget", deliveries, id .. ":dedup")
  if not ref then
    return false
  end
  redis.call("hdel", deliveries, id .. ":dedup")
  local bar = string.find(ref, "|", 1, true)
  local message_id, key = string.sub(ref, 1, bar - 1), string.sub(ref, bar + 1)
  local record = redis.call("hget", dedup, key)
  if record and string.sub(record, 1, #message_id + 1) == message_id .. "|" then
    redis.call("hdel", dedup, key)
    redis.call("zrem", dedup_exp, key)
    return key
  end
  return false
end

-- Drop up to DEDUP_SWEEP expired keys.
local function dedup_sweep(dedup, dedup_exp, now)
  local expired = redis.call("zrangebyscore", dedup_exp, "-inf", now, "LIMIT", 0, DEDUP_SWEEP)
  if #expired > 0 then
    redis.call("zrem", dedup_exp, unpack(expired))
    redis.call("hdel", dedup, unpack(expired))
  end
end
