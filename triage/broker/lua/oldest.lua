-- oldest: how long the oldest message that a worker could take now has waited, for
-- `triage stats` and load shedding: the earliest head of a FIFO in a round-robin (heads,
-- _fifo.lua), or a delayed message whose eta has passed but that no fetch has moved yet
-- (every worker busy), whichever waited longer. A heads entry whose FIFO is empty (left by a
-- worker of an earlier version, which does not keep heads) is dropped on the way.
--
-- KEYS:
--   state    KEYS[1]  {ns:Q}:state, hash "n|level|tenant" -> messages queued in that FIFO (read)
--   heads    KEYS[2]  {ns:Q}:heads, zset "level|tenant" -> since when its head waits (stale entries dropped)
--   delayed  KEYS[3]  {ns:Q}:delayed, zset "id|level|tenant" scored by eta (read)
-- ARGV: now_ms by the caller's clock (the delayed set's etas are the producers')
-- Writes: heads (stale entries only)
-- Returns: the wait in ms (0 when nothing waits)

local state = KEYS[1]
local heads = KEYS[2]
local delayed = KEYS[3]
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = now
for _ = 1, 100 do
  local top = redis.call("zrange", heads, 0, 0, "WITHSCORES")
  if #top == 0 then
    break
  end
  if tonumber(redis.call("hget", state, "n|" .. top[1]) or "0") > 0 then
    oldest = math.min(oldest, tonumber(top[2]))
    break
  end
  redis.call("zrem", heads, top[1])
end
local due = redis.call("zrangebyscore", delayed, "-inf", ARGV[1], "WITHSCORES", "LIMIT", 0, 1)
if #due > 0 then
  oldest = math.min(oldest, now - (tonumber(ARGV[1]) - tonumber(due[2])))
end
return math.max(0, now - oldest)
