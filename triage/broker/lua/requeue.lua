-- requeue: put in-flight messages of this consumer back at the head of their level and
-- tenant, in their original order, and wake a consumer (worker shutdown, fetched but not
-- started).
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then four more.
--   stats       KEYS[b + STATS]  {ns:Q}:stats (running)
--   acks        KEYS[BLOCK + 1]  {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[BLOCK + 2]  {ns:Q}:deliveries, hash id -> deliveries so far
--   tenants     KEYS[BLOCK + 3]  {ns:Q}:tenants (each message's tenant gets its in-flight slot back)
--   parked      KEYS[BLOCK + 4]  {ns:Q}:parked (levels parked for want of a slot become due)
--   wake        KEYS[b + WAKE]   {ns:Q}:wake
--   items, state and rr:level are written by the _fifo.lua helpers.
-- ARGV: message ids, oldest first
-- Writes: items, state, stats (running), wake, rr:*, acks, deliveries, tenants, parked (a message given back
--   unstarted was not delivered: its count goes down again)
-- Returns: the number of messages put back.

local b = 0
local stats = KEYS[b + STATS]
local acks = KEYS[BLOCK + 1]
local deliveries = KEYS[BLOCK + 2]
local tenants = KEYS[BLOCK + 3]
local parked = KEYS[BLOCK + 4]
local wake = KEYS[b + WAKE]
local moved = 0

for i = #ARGV, 1, -1 do
  local meta = redis.call("hget", acks, ARGV[i])
  if meta then
    redis.call("hdel", acks, ARGV[i])
    redis.call("hincrby", deliveries, ARGV[i], -1)
    local level, tenant = split_meta(meta)
    fifo_push(b, level, tenant, ARGV[i], true)
    tenant_release(tenants, parked, wake, tenant)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call("hincrby", stats, "running", -moved)
  wake_up(b, moved)
end
return moved
