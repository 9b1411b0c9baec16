-- dedup: release the dedup key a stored message holds, if it still holds it: when an
-- until_start message starts running (the worker calls it; _dedup.lua).
--
-- KEYS (keys.dedup_script_keys() order):
--   deliveries  KEYS[1]  {ns:Q}:deliveries ("id:dedup" -> "message_id|key", the reference, dropped)
--   dedup       KEYS[2]  {ns:Q}:dedup, hash dedup key -> its holder
--   dedup_exp   KEYS[3]  {ns:Q}:dedup.exp, zset dedup key -> when it expires
-- ARGV: "release", the message's id in Redis (redis_message_id)
-- Writes: deliveries, dedup, dedup.exp
-- Returns: the key released, or false when the message held none (any more).

local deliveries = KEYS[1]
local dedup = KEYS[2]
local dedup_exp = KEYS[3]

if ARGV[1] ~= "release" then
  return redis.error_reply("dedup: unknown operation " .. tostring(ARGV[1]))
end
return dedup_release(dedup, dedup_exp, deliveries, ARGV[2])
