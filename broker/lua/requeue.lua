-- requeue: put in-flight messages of this consumer back at the head of their level and
-- tenant, in their original order, and wake a consumer (worker shutdown, fetched but not
-- started).
--
-- KEYS: the queue's 17-key block (msgs, items, state, delayed, stats, paused, wake,
--   rr:1 .. rr:10), then 18: {ns:Q}:acks:<consumer id>, 19: {ns:Q}:deliveries
-- ARGV: message ids, oldest first
-- Writes: items, state, stats (running), wake, rr:*, acks, deliveries (a message given back
--   unstarted was not delivered: its count goes down again)
-- Returns: the number of messages put back.

local b = 0
local acks = KEYS[18]
local moved = 0
for i = #ARGV, 1, -1 do
  local meta = redis.call("hget", acks, ARGV[i])
  if meta then
    redis.call("hdel", acks, ARGV[i])
    redis.call("hincrby", KEYS[19], ARGV[i], -1)
    local level, tenant = split_meta(meta)
    fifo_push(b, level, tenant, ARGV[i], true)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call("hincrby", KEYS[5], "running", -moved)
  wake(b, moved)
end
return moved
