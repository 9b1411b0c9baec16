-- retry: settle a delivery by putting its message back, in one atomic step, so that a retry
-- or a deferral is never lost between "enqueue again" and "forget the failed delivery":
--   "retry"  the message (re-encoded by the caller: retries + 1) takes a new id, on this queue
--            or another (retry_queue), after its backoff; the delivery count starts again;
--   "defer"  the same message, same id and queue, after a delay; no retry is used and the
--            delivery does not count (the fetch's increment is undone);
--   "move"   as "retry", but no retry is used (the caller keeps `retries`): a demotion to
--            another queue (an open circuit breaker's `background` policy), counted as moved.
-- Either way it keeps its priority and tenant, and goes to the tail of its level and tenant.
-- A dedup key the message holds stays held: on the same queue the new id takes over the
-- reference ("id:dedup" in deliveries, _dedup.lua); on another queue the key, which lives under
-- the first queue's hash tag, stays held there until its ttl.
--
-- KEYS: the block of the queue it goes to, at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in
--   _fifo.lua), then eleven more; src_* are the queue it was fetched from (the same queue
--   for a deferral, and for a retry that stays).
--   msgs            KEYS[b + MSGS]     {ns:T}:msgs, hash id -> encoded message
--   delayed         KEYS[b + DELAYED]  {ns:T}:delayed, zset "id|level|tenant" scored by eta
--   deliveries      KEYS[BLOCK + 1]    {ns:T}:deliveries ("id:max": a message's own limit)
--   retrying        KEYS[BLOCK + 2]    {ns:T}:retrying, zset id -> eta of the retries waiting
--   src_msgs        KEYS[BLOCK + 3]    {ns:Q}:msgs (the failed delivery's message leaves it)
--   src_stats       KEYS[BLOCK + 4]    {ns:Q}:stats (running, retries_total, deferred_total, moved_total)
--   src_acks        KEYS[BLOCK + 5]    {ns:Q}:acks:<consumer id>, the in-flight record
--   src_deliveries  KEYS[BLOCK + 6]    {ns:Q}:deliveries, hash id -> deliveries so far ("id:dedup": its key)
--   src_tenants     KEYS[BLOCK + 7]    {ns:Q}:tenants (the tenant gets its in-flight slot back, _tenants.lua)
--   src_parked      KEYS[BLOCK + 8]    {ns:Q}:parked (its levels parked for want of a slot become due)
--   src_wake        KEYS[BLOCK + 9]    {ns:Q}:wake (a token when they do)
--   tenants         KEYS[BLOCK + 10]   {ns:T}:tenants (a message moved to another queue is pending there)
--   src_tenants_idle KEYS[BLOCK + 11]  {ns:Q}:tenants.idle (its last message moved away: the tenant is idle there)
--   items, state, rr:level and wake (of the target) are written by the _fifo.lua helpers.
-- ARGV: "retry", "defer" or "move", now_ms, id in flight, new id (retry), encoded message (retry),
--   level, tenant, eta_ms, max_deliveries of the new message (0: the queue's default)
-- Writes: msgs, delayed, retrying, items, state, rr:*, wake, deliveries; src_msgs, src_stats,
--   src_acks, src_deliveries, src_tenants, src_parked, src_wake, tenants, src_tenants_idle
-- Returns: 1, or 0 when the message was not in flight for this consumer (already settled, or
--   reclaimed after this worker was presumed dead): then nothing is written.
-- Order: the message is placed first and the delivery forgotten last, so that if Redis
-- refuses a write (a key of the wrong type), the delivery is still in flight, untouched
-- (Redis does not roll a script back), and the caller can dead-letter it instead.

local b = 0
local msgs = KEYS[b + MSGS]
local delayed = KEYS[b + DELAYED]
local deliveries = KEYS[BLOCK + 1]
local retrying = KEYS[BLOCK + 2]
local src_msgs = KEYS[BLOCK + 3]
local src_stats = KEYS[BLOCK + 4]
local src_acks = KEYS[BLOCK + 5]
local src_deliveries = KEYS[BLOCK + 6]
local src_tenants = KEYS[BLOCK + 7]
local src_parked = KEYS[BLOCK + 8]
local src_wake = KEYS[BLOCK + 9]
local tenants = KEYS[BLOCK + 10]
local src_tenants_idle = KEYS[BLOCK + 11]
local mode, now, old = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local level, tenant, eta = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])

local meta = redis.call("hget", src_acks, old)
if not meta then
  return 0
end
local id = old
if mode ~= "defer" then
  id = ARGV[4]
end
if eta > now then
  redis.call("zadd", delayed, eta, id .. "|" .. level .. "|" .. tenant)
  if mode == "retry" then
    redis.call("zadd", retrying, eta, id)
  end
else
  fifo_push(b, level, tenant, id, false)
end
if mode ~= "defer" then
  redis.call("hset", msgs, id, ARGV[5])
  if tonumber(ARGV[9]) > 0 then
    redis.call("hset", deliveries, id .. ":max", ARGV[9])
  end
end
redis.call("hdel", src_acks, old)
local _, src_tenant = split_meta(meta)
tenant_release(src_tenants, src_parked, src_wake, src_tenant)
if src_msgs ~= msgs then  -- to another queue (retry_queue, a demotion): pending there, not here
  tenant_done(src_tenants, src_tenants_idle, src_tenant)
  tenant_pending(tenants, tenant, 1)
end
redis.call("hincrby", src_stats, "running", -1)
if mode == "defer" then
  redis.call("hincrby", src_deliveries, old, -1)
  redis.call("hincrby", src_stats, "deferred_total", 1)
else
  local ref = redis.call("hget", src_deliveries, old .. ":dedup")
  if ref and src_msgs == msgs then
    redis.call("hset", deliveries, id .. ":dedup", ref)
  end
  redis.call("hdel", src_msgs, old)
  redis.call("hdel", src_deliveries, old, old .. ":max", old .. ":dedup")
  if mode == "retry" then
    redis.call("hincrby", src_stats, "retries_total", 1)
  else
    redis.call("hincrby", src_stats, "moved_total", 1)
  end
end
wake_up(b, 1)
return 1
