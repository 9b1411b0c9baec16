-- dlq: an operator's action on one dead letter, atomic, so that two operators (or a rerun
-- after Ctrl-C) act on each entry once:
--   "requeue"  the entry leaves the dead letters and its message (re-encoded by the caller:
--              attempts reset, requeued_from set) joins the tail of its level and tenant;
--   "purge"    the entry leaves the dead letters.
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then five more.
--   msgs        KEYS[b + MSGS]   {ns:Q}:msgs, hash id -> encoded message
--   stats       KEYS[b + STATS]  {ns:Q}:stats (enqueued_total, requeued_total, purged_total)
--   deliveries  KEYS[BLOCK + 1]  {ns:Q}:deliveries ("id:max": a message's own limit)
--   dead        KEYS[BLOCK + 2]  {ns:Q}:dead, zset id -> time dead-lettered
--   dead_msgs   KEYS[BLOCK + 3]  {ns:Q}:dead.msgs, hash id -> message
--   dead_info   KEYS[BLOCK + 4]  {ns:Q}:dead.info, hash id -> JSON record
--   dead_idx    KEYS[BLOCK + 5]  {ns:Q}:dead.idx, the lexicographic index of the dead letters
--   items, state, rr:level and wake are written by the _fifo.lua helpers.
-- ARGV: "requeue" or "purge", dead letter id; for requeue: new id, encoded message, level,
--   tenant, max_deliveries (0: the queue's default)
-- Writes: dead, dead.msgs, dead.info, dead.idx, stats; for requeue: msgs, deliveries, items,
--   state, rr:*, wake
-- Returns: 1 if the entry was there (and is gone now), 0 if it was not (taken already).

local b = 0
local msgs = KEYS[b + MSGS]
local stats = KEYS[b + STATS]
local deliveries = KEYS[BLOCK + 1]
local dead = KEYS[BLOCK + 2]
local dead_msgs = KEYS[BLOCK + 3]
local dead_info = KEYS[BLOCK + 4]
local dead_idx = KEYS[BLOCK + 5]

if not dead_remove(dead, dead_msgs, dead_info, dead_idx, ARGV[2]) then
  return 0
end
if ARGV[1] == "purge" then
  redis.call("hincrby", stats, "purged_total", 1)
  return 1
end
local id = ARGV[3]
redis.call("hset", msgs, id, ARGV[4])
if tonumber(ARGV[7]) > 0 then
  redis.call("hset", deliveries, id .. ":max", ARGV[7])
end
fifo_push(b, tonumber(ARGV[5]), ARGV[6], id, false)
redis.call("hincrby", stats, "enqueued_total", 1)
redis.call("hincrby", stats, "requeued_total", 1)
wake_up(b, 1)
return 1
