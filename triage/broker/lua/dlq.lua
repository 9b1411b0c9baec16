-- dlq: operations on a queue's dead letters, atomic, so that two operators (or a rerun after
-- Ctrl-C) act on each entry once:
--   "requeue"  the entry leaves the dead letters and its message (re-encoded by the caller:
--              attempts reset, requeued_from set) joins the tail of its level and tenant;
--   "purge"    the entry leaves the dead letters;
--   "index"    index entries written before the index existed (their record is completed
--              from the message first); indexing twice changes nothing;
--   "trim"     apply the retention now (workers call it, so that an idle queue is trimmed too).
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then six more.
--   msgs        KEYS[b + MSGS]   {ns:Q}:msgs, hash id -> encoded message
--   stats       KEYS[b + STATS]  {ns:Q}:stats (enqueued_total, requeued_total, purged_total, dead_trimmed_total)
--   deliveries  KEYS[BLOCK + 1]  {ns:Q}:deliveries ("id:max": a message's own limit)
--   dead        KEYS[BLOCK + 2]  {ns:Q}:dead, zset id -> time dead-lettered
--   dead_msgs   KEYS[BLOCK + 3]  {ns:Q}:dead.msgs, hash id -> message
--   dead_info   KEYS[BLOCK + 4]  {ns:Q}:dead.info, hash id -> JSON record
--   dead_idx    KEYS[BLOCK + 5]  {ns:Q}:dead.idx, the lexicographic index of the dead letters
--   tenants     KEYS[BLOCK + 6]  {ns:Q}:tenants (a requeued message counts as its tenant's pending again)
--   items, state, rr:level and wake are written by the _fifo.lua helpers (requeue).
-- ARGV: "requeue", dead letter id, new id, encoded message, level, tenant, max_deliveries (0: the
--   queue's default); "purge", dead letter id; "index", dead letter ids...; "trim", now_ms,
--   max entries, max age in ms (0: no limit)
-- Writes: dead, dead.msgs, dead.info, dead.idx, stats; for requeue also msgs, deliveries, tenants, items,
--   state, rr:*, wake
-- Returns: requeue and purge: 1 if the entry was there (and is gone now), 0 if it was not (taken
--   already); index: entries indexed; trim: entries dropped.

local b = 0
local msgs = KEYS[b + MSGS]
local stats = KEYS[b + STATS]
local deliveries = KEYS[BLOCK + 1]
local dead = KEYS[BLOCK + 2]
local dead_msgs = KEYS[BLOCK + 3]
local dead_info = KEYS[BLOCK + 4]
local dead_idx = KEYS[BLOCK + 5]
local tenants = KEYS[BLOCK + 6]
local mode = ARGV[1]

if mode == "trim" then
  return dead_trim(dead, dead_msgs, dead_info, dead_idx, stats, tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4]))
end
if mode == "index" then
  local indexed = 0
  for i = 2, #ARGV do
    local id = ARGV[i]
    local info = redis.call("hget", dead_info, id)
    if info then
      local record = cjson.decode(info)
      if record.actor == nil then
        local at = tonumber(record.dead_lettered_at_ms) or 0
        record = dead_record(redis.call("hget", dead_msgs, id), record, tonumber(record.deliveries) or 0, at)
        record.dead_lettered_at_ms = at
        redis.call("hset", dead_info, id, cjson.encode(record))
      end
      for _, member in ipairs(dead_index(record, id)) do
        redis.call("zadd", dead_idx, 0, member)
      end
      indexed = indexed + 1
    end
  end
  return indexed
end
if not dead_remove(dead, dead_msgs, dead_info, dead_idx, ARGV[2]) then
  return 0
end
if mode == "purge" then
  redis.call("hincrby", stats, "purged_total", 1)
  return 1
end
local id = ARGV[3]
redis.call("hset", msgs, id, ARGV[4])
if tonumber(ARGV[7]) > 0 then
  redis.call("hset", deliveries, id .. ":max", ARGV[7])
end
fifo_push(b, tonumber(ARGV[5]), ARGV[6], id, false)
tenant_pending(tenants, ARGV[6], 1)
redis.call("hincrby", stats, "enqueued_total", 1)
redis.call("hincrby", stats, "requeued_total", 1)
wake_up(b, 1)
return 1
