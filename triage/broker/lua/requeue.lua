-- requeue: put in-flight messages of this consumer back at the head of their level and
-- tenant, in their original order, and wake a consumer (worker shutdown, fetched but not
-- started).
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then two more
--   (the keys of fetch.lua).
--   stats       KEYS[b + STATS]  {ns:Q}:stats (running)
--   acks        KEYS[BLOCK + 1]  {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[BLOCK + 2]  {ns:Q}:deliveries, hash id -> deliveries so far
--   items, state, rr:level and wake are written by the _fifo.lua helpers.
-- ARGV: message ids, oldest first
-- Writes: items, state, stats (running), wake, rr:*, acks, deliveries (a message given back
--   unstarted was not delivered: its count goes down again)
-- Returns: the number of messages put back.

local b = 0
local stats = KEYS[b + STATS]
local acks = KEYS[BLOCK + 1]
local deliveries = KEYS[BLOCK + 2]
local moved = 0

for i = #ARGV, 1, -1 do
  local meta = redis.call("hget", acks, ARGV[i])
  if meta then
    redis.call("hdel", acks, ARGV[i])
    redis.call("hincrby", deliveries, ARGV[i], -1)
    local level, tenant = split_meta(meta)
    fifo_push(b, level, tenant, ARGV[i], true)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call("hincrby", stats, "running", -moved)
  wake_up(b, moved)
end
return moved
