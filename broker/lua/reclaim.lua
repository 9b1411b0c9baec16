-- reclaim: take back the in-flight messages of a worker presumed dead (its heartbeat is too
-- old). Each goes back to the head of its level and tenant, unless it has already been
-- delivered max_deliveries times: a message that keeps killing its worker is moved to the
-- dead letters with reason "crash-loop" instead of being delivered again.
--
-- KEYS: the queue's 17-key block (msgs, items, state, delayed, stats, paused, wake,
--   rr:1 .. rr:10), then 18: {ns:Q}:acks:<dead worker id>, 19: {ns:Q}:deliveries,
--   20: {ns:Q}:dead, 21: {ns:Q}:dead.msgs, 22: {ns:Q}:dead.info
-- ARGV: now_ms, the queue's max_deliveries, the dead worker's id
-- Writes: items, state, stats (running, dead_total), wake, rr:*, acks (deleted), deliveries,
--   msgs (quarantined ones leave it), dead, dead.msgs, dead.info
-- Returns: { messages put back, messages quarantined }

local b = 0
local now = tonumber(ARGV[1])
local default_max = tonumber(ARGV[2])
local acks = KEYS[18]
local deliveries = KEYS[19]
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
  local count = tonumber(redis.call("hget", deliveries, id) or "0")
  local max = tonumber(redis.call("hget", deliveries, id .. ":max") or default_max)
  if count >= max then
    dead_letter(KEYS[1], deliveries, KEYS[20], KEYS[21], KEYS[22], KEYS[5], id, now, {
      reason = "crash-loop",
      error = { type = "WorkerDied", message = "its worker died while running it, " .. count .. " times (worker " .. ARGV[3] .. ")" },
    })
    quarantined = quarantined + 1
  else
    fifo_push(b, level, tenant, id, true)
    back = back + 1
  end
end
redis.call("del", acks)
if #entries > 0 then
  redis.call("hincrby", KEYS[5], "running", -(back + quarantined))
end
if back > 0 then
  wake(b, back)
end
return { back, quarantined }
