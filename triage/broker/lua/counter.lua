-- counter: add to a counter unless it would pass a bound, atomically, on one key: the
-- barrier of Dramatiq's group callbacks (`triage.broker.barriers`), without WATCH, so that it
-- works on Redis Cluster as on one Redis.
--
-- KEYS:
--   counter  KEYS[1]  any string key: the counter (absent: 0)
-- ARGV: amount (negative to subtract), bound, "max" or "min" (the bound is a maximum or a
--   minimum), ttl_ms of the counter once written
-- Writes: counter (SET with PX)
-- Returns: 1 if the counter was written, 0 if the new value would pass the bound (nothing written)

local counter = KEYS[1]
local value = tonumber(redis.call("get", counter) or "0") + tonumber(ARGV[1])
local bound = tonumber(ARGV[2])
if (ARGV[3] == "max" and value > bound) or (ARGV[3] == "min" and value < bound) then
  return 0
end
redis.call("set", counter, value, "px", ARGV[4])
return 1
