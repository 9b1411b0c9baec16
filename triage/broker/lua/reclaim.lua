-- reclaim: take back the in-flight messages of a worker presumed dead (its heartbeat is too
-- old). Each goes back to the head of its level and tenant, unless it has already been
-- delivered max_deliveries times: a message that keeps killing its worker is moved to the
-- dead letters with reason "crash-loop" instead of being delivered again.
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then eleven more.
--   msgs        KEYS[b + MSGS]   {ns:Q}:msgs, hash id -> encoded message (quarantined ones leave it)
--   stats       KEYS[b + STATS]  {ns:Q}:stats (running, dead_total)
--   acks        KEYS[BLOCK + 1]  {ns:Q}:acks:<dead worker id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[BLOCK + 2]  {ns:Q}:deliveries, hash id -> deliveries so far (and "id:max")
--   dead        KEYS[BLOCK + 3]  {ns:Q}:dead, zset id -> time dead-lettered
--   dead_msgs   KEYS[BLOCK + 4]  {ns:Q}:dead.msgs, hash id -> message
--   dead_info   KEYS[BLOCK + 5]  {ns:Q}:dead.info, hash id -> JSON record (see _dead.lua)
--   dead_idx    KEYS[BLOCK + 6]  {ns:Q}:dead.idx, the lexicographic index of the dead letters
--   tenants     KEYS[BLOCK + 7]  {ns:Q}:tenants (in-flight slots back; a quarantined message is not pending)
--   parked      KEYS[BLOCK + 8]  {ns:Q}:parked (levels parked for want of a slot become due)
--   dedup       KEYS[BLOCK + 9]  {ns:Q}:dedup (a quarantined message's dedup key is released, _dedup.lua)
--   dedup_exp   KEYS[BLOCK + 10] {ns:Q}:dedup.exp
--   tenants_idle KEYS[BLOCK + 11] {ns:Q}:tenants.idle (a tenant whose last pending message is quarantined is idle)
--   wake        KEYS[b + WAKE]   {ns:Q}:wake
--   items, state, heads and rr:level are written by the _fifo.lua helpers.
-- ARGV: now_ms, the queue's max_deliveries, the dead worker's id, the queue's max dead letters
--   and their max age in ms (0: no limit)
-- Writes: items, state, stats (running, dead_total, dead:crash-loop), wake, rr:*, acks (deleted),
--   deliveries, msgs (quarantined ones leave it), dead, dead.msgs, dead.info, dead.idx, tenants, parked, heads, dedup, dedup.exp,
--   tenants.idle
-- Returns: { messages put back, messages quarantined }

local b = 0
local msgs = KEYS[b + MSGS]
local stats = KEYS[b + STATS]
local acks = KEYS[BLOCK + 1]
local deliveries = KEYS[BLOCK + 2]
local dead = KEYS[BLOCK + 3]
local dead_msgs = KEYS[BLOCK + 4]
local dead_info = KEYS[BLOCK + 5]
local dead_idx = KEYS[BLOCK + 6]
local tenants = KEYS[BLOCK + 7]
local parked = KEYS[BLOCK + 8]
local dedup = KEYS[BLOCK + 9]
local dedup_exp = KEYS[BLOCK + 10]
local tenants_idle = KEYS[BLOCK + 11]
local wake = KEYS[b + WAKE]
local now = tonumber(ARGV[1])
local default_max = tonumber(ARGV[2])

local entries = redis.call("hgetall", acks)
-- In fetch order, newest first: each goes to the head, so the oldest ends up first.
local inflight = {}
for i = 1, #entries, 2 do
  local level, tenant, seq = split_meta(entries[i + 1])
  inflight[#inflight + 1] = { id = entries[i], level = level, tenant = tenant, seq = seq }
end
table.sort(inflight, function(x, y) return x.seq > y.seq end)
local back, quarantined = 0, 0
for _, message in ipairs(inflight) do
  local id, level, tenant = message.id, message.level, message.tenant
  tenant_release(tenants, parked, wake, tenant)  -- a kill -9 leaks no slot
  local count = tonumber(redis.call("hget", deliveries, id) or "0")
  local max = tonumber(redis.call("hget", deliveries, id .. ":max") or default_max)
  if count >= max then
    tenant_done(tenants, tenants_idle, tenant)
    dedup_release(dedup, dedup_exp, deliveries, id)
    dead_letter(msgs, deliveries, dead, dead_msgs, dead_info, dead_idx, stats, id, {
      reason = "crash-loop",
      error = {
        type = "WorkerDied",
        message = "its worker died while running it, " .. count .. " times (worker " .. ARGV[3] .. ")",
      },
    }, now)
    quarantined = quarantined + 1
  else
    fifo_push(b, level, tenant, id, true)
    back = back + 1
  end
end
redis.call("del", acks)
if #entries > 0 then
  redis.call("hincrby", stats, "running", -(back + quarantined))
end
if back > 0 then
  wake_up(b, back)
end
if quarantined > 0 then
  dead_trim(dead, dead_msgs, dead_info, dead_idx, stats, now, tonumber(ARGV[4]), tonumber(ARGV[5]))
end
return { back, quarantined }
