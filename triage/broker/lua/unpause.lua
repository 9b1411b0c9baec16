-- unpause: resume a queue that one owner paused (a breaker's pause, `SET paused owner PX ms
-- NX`), and wake its idle consumers; a pause by anyone else (an operator) stays.
--
-- KEYS:
--   paused  KEYS[1]  {ns:Q}:paused (deleted when it holds ARGV[1])
--   wake    KEYS[2]  {ns:Q}:wake (eight wake-up tokens pushed when resumed)
-- ARGV: owner
-- Returns: 1 if the queue was resumed, else 0.

local paused = KEYS[1]
local wake = KEYS[2]

if redis.call("get", paused) ~= ARGV[1] then
  return 0
end
redis.call("del", paused)
redis.call("rpush", wake, "1", "1", "1", "1", "1", "1", "1", "1")
return 1
