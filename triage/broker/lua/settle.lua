-- settle: finish an in-flight message: ack (forget it), nack (move it to the dead letters
-- with why it failed, then apply the queue's retention), or handed (its retry or move was
-- stored on another cluster slot already: forget it as retry.lua does, its dedup key held).
--
-- KEYS (not the queue's block; keys.settle_keys() order):
--   msgs        KEYS[1]  {ns:Q}:msgs, hash id -> encoded message
--   stats       KEYS[2]  {ns:Q}:stats (running, acked_total, dead_total, dead:<reason>, dead_trimmed_total)
--   acks        KEYS[3]  {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[4]  {ns:Q}:deliveries, hash id -> deliveries so far (and "id:max")
--   dead        KEYS[5]  {ns:Q}:dead, zset id -> time dead-lettered
--   dead_msgs   KEYS[6]  {ns:Q}:dead.msgs, hash id -> message
--   dead_info   KEYS[7]  {ns:Q}:dead.info, hash id -> JSON record (see _dead.lua)
--   dead_idx    KEYS[8]  {ns:Q}:dead.idx, the lexicographic index of the dead letters
--   tenants     KEYS[9]  {ns:Q}:tenants (the tenant gets its in-flight slot back and one pending less)
--   parked      KEYS[10] {ns:Q}:parked (its levels parked for want of a slot become due)
--   wake        KEYS[11] {ns:Q}:wake (a token when they do)
--   dedup       KEYS[12] {ns:Q}:dedup (the dedup key the message holds is released, _dedup.lua)
--   dedup_exp   KEYS[13] {ns:Q}:dedup.exp
--   tenants_idle KEYS[14] {ns:Q}:tenants.idle (a tenant whose last pending message settles is idle from now)
-- ARGV: "ack", "nack" or "handed", now_ms, id; for ack: more ids may follow (acks written
--   together, `acks.py`); for nack: the JSON description of the failure (reason, error, queue,
--   actor), the queue's max dead letters and their max age in ms (0: no limit); for handed: the
--   counter to add one to (retries_total or moved_total)
-- Writes: msgs, stats, acks, deliveries, dead, dead.msgs, dead.info, dead.idx, tenants, parked, wake,
--   dedup, dedup.exp, tenants.idle
-- Returns: how many messages were settled: an id not in flight for this consumer (already
--   settled, or reclaimed after this worker was presumed dead) counts 0.

local msgs = KEYS[1]
local stats = KEYS[2]
local acks = KEYS[3]
local deliveries = KEYS[4]
local dead = KEYS[5]
local dead_msgs = KEYS[6]
local dead_info = KEYS[7]
local dead_idx = KEYS[8]
local tenants = KEYS[9]
local parked = KEYS[10]
local wake = KEYS[11]
local dedup = KEYS[12]
local dedup_exp = KEYS[13]
local tenants_idle = KEYS[14]
local mode = ARGV[1]
local now = tonumber(ARGV[2])

local function settle(id)
  local meta = redis.call("hget", acks, id)
  if not meta then
    return 0
  end
  redis.call("hdel", acks, id)
  local _, tenant = split_meta(meta)
  tenant_release(tenants, parked, wake, tenant)
  tenant_done(tenants, tenants_idle, tenant)  -- acked or dead-lettered: no longer pending
  redis.call("hincrby", stats, "running", -1)
  if mode ~= "handed" then
    dedup_release(dedup, dedup_exp, deliveries, id)  -- acked or dead-lettered: done, for its dedup key
  end
  if mode == "nack" then
    dead_letter(msgs, deliveries, dead, dead_msgs, dead_info, dead_idx, stats, id, cjson.decode(ARGV[4]), now)
    dead_trim(dead, dead_msgs, dead_info, dead_idx, stats, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
  elseif mode == "handed" then
    redis.call("hincrby", stats, ARGV[4], 1)
    redis.call("hdel", msgs, id)
    redis.call("hdel", deliveries, id, id .. ":max", id .. ":dedup")
  else
    redis.call("hincrby", stats, "acked_total", 1)
    redis.call("hdel", msgs, id)
    redis.call("hdel", deliveries, id, id .. ":max")
  end
  return 1
end

if mode ~= "ack" then
  return settle(ARGV[3])
end
local settled = 0
for i = 3, #ARGV do
  settled = settled + settle(ARGV[i])
end
return settled
