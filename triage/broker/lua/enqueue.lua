-- enqueue: store messages and place them by priority and tenant, or in the delayed set,
-- for one or more queues, all or nothing (one script call is atomic). Deduplication first:
-- a message whose dedup key is held (by an earlier message, or by one before it in this call)
-- is not stored, and the holder's message_id is returned for it. Then admission: a tenant
-- whose pending messages (queued, delayed, in flight) would exceed its queue's max_pending is
-- refused (nothing at all is stored), or, under the "defer" policy, its new messages are
-- delayed by the queue's defer time. Then every other message is stored and takes its key.
--
-- KEYS: one block of BLOCK + 6 keys per queue, queue g (1, 2, ...) at offset b = (BLOCK + 6) * (g - 1):
--   the queue's block (laid out in _fifo.lua), then six more. Named here:
--   msgs        KEYS[b + MSGS]       {ns:Q}:msgs, hash id -> encoded message
--   delayed     KEYS[b + DELAYED]    {ns:Q}:delayed, zset "id|level|tenant" scored by eta
--   stats       KEYS[b + STATS]      {ns:Q}:stats (enqueued_total, duplicates_total, ...)
--   deliveries  KEYS[b + BLOCK + 1]  {ns:Q}:deliveries ("id:max" -> its own max_deliveries, "id:dedup" -> its key)
--   tenants     KEYS[b + BLOCK + 2]  {ns:Q}:tenants ("p|t" pending per tenant; "d|t", "a|t" refused, deferred)
--   limits      KEYS[b + BLOCK + 3]  {ns:Q}:limits (read: a tenant's own max_pending)
--   dedup       KEYS[b + BLOCK + 4]  {ns:Q}:dedup, hash dedup key -> its holder (_dedup.lua)
--   dedup_exp   KEYS[b + BLOCK + 5]  {ns:Q}:dedup.exp, zset dedup key -> when it expires
--   tenants_idle KEYS[b + BLOCK + 6] {ns:Q}:tenants.idle (a refused or deferred tenant is tracked, _tenants.lua)
--   items, state, heads, rr:level and wake are written by the _fifo.lua helpers.
-- ARGV: 1 now_ms, 2 a msgpack array with one entry per queue, in KEYS order, each a flat array
--   of ENQUEUE_FIELDS per message: id, encoded message, level (1-10), tenant ("" for the shared
--   tenant), eta_ms (0: now), max_deliveries (0: the queue's default), message_id, dedup key
--   ("": none), dedup mode ("d", "s" or "w"), dedup ttl_ms, 1 if load shedding holds it back
--   (its eta says for how long; counted only) else 0 (one argument for the whole batch keeps
--   the call cheap); 3 a msgpack array, per queue in KEYS order, of {max_pending (0: none),
--   defer_ms (0: refuse over it)}. Dedup keys expire by Redis's clock (one for every producer).
-- Writes: msgs, items, state, delayed, stats (enqueued_total, duplicates_total,
--   admission_denied_total, admission_deferred_total, shed_total), wake, rr:*, deliveries,
--   tenants, heads, dedup, dedup.exp, tenants.idle
-- Returns: { "stored", how many were stored, then for each duplicate: its queue's position g,
--   its position in that queue's array (1, 2, ...), the holder's message_id (its own for a message
--   sent again that is stored already) }, or, when a tenant
--   is refused, { "refused", tenant, the queue's position g, its pending messages, its
--   max_pending } (and nothing was stored).

local now = tonumber(ARGV[1])
local groups = cmsgpack.unpack(ARGV[2])
local admission = cmsgpack.unpack(ARGV[3])
local F = ENQUEUE_FIELDS

-- Deduplication, before anything is written: which messages' keys are held already.
local duplicate = {} -- [g][i] = the holder's message_id
local reply = { "stored", 0 }
for g, fields in ipairs(groups) do
  local b = (BLOCK + 6) * (g - 1)
  local dedup = KEYS[b + BLOCK + 4]
  local taken = {}
  duplicate[g] = {}
  for i = 1, #fields, F do
    local key = fields[i + 7]
    if key ~= "" then
      local holder = taken[key] or dedup_holder(dedup, key, fifo_now())
      if holder then
        duplicate[g][i] = holder
        reply[#reply + 1] = g
        reply[#reply + 1] = (i - 1) / F + 1
        reply[#reply + 1] = holder
      else
        taken[key] = fields[i + 6]
      end
    end
  end
end

-- Admission, before anything is written: the tenants over their max_pending, per queue.
local over = {}
for g, fields in ipairs(groups) do
  local b = (BLOCK + 6) * (g - 1)
  local stats = KEYS[b + STATS]
  local tenants = KEYS[b + BLOCK + 2]
  local limits = KEYS[b + BLOCK + 3]
  local tenants_idle = KEYS[b + BLOCK + 6]
  local max_pending, defer_ms = admission[g][1], admission[g][2]
  local adding = {}
  for i = 1, #fields, F do
    local tenant = fields[i + 3]
    if tenant ~= "" and not duplicate[g][i] then
      adding[tenant] = (adding[tenant] or 0) + 1
    end
  end
  for tenant, n in pairs(adding) do
    local _, _, _, cap = tenant_limits(limits, tenant, 0, 0, 0, max_pending)
    local pending = tonumber(redis.call("hget", tenants, "p|" .. tenant) or "0")
    if cap > 0 and pending + n > cap then
      if defer_ms == 0 then
        redis.call("hincrby", tenants, "d|" .. tenant, n)
        redis.call("hincrby", stats, "admission_denied_total", n)
        tenant_track(tenants_idle, tenant)
        return { "refused", tenant, g, pending, cap }
      end
      over[g .. "|" .. tenant] = now + defer_ms
      redis.call("hincrby", tenants, "a|" .. tenant, n)
      redis.call("hincrby", stats, "admission_deferred_total", n)
      tenant_track(tenants_idle, tenant)
    end
  end
end

local stored = 0
for g, fields in ipairs(groups) do
  local b = (BLOCK + 6) * (g - 1)
  local msgs = KEYS[b + MSGS]
  local delayed = KEYS[b + DELAYED]
  local stats = KEYS[b + STATS]
  local deliveries = KEYS[b + BLOCK + 1]
  local tenants = KEYS[b + BLOCK + 2]
  local dedup = KEYS[b + BLOCK + 4]
  local dedup_exp = KEYS[b + BLOCK + 5]
  local ready, count, duplicates, shed, keyed = 0, 0, 0, 0, false
  -- Messages go in with as few calls as possible: bodies in chunks of HSET pairs, and the
  -- ready ones of one level and tenant as one run (in order) at the tail of their FIFO.
  local bodies, runs, run_order = {}, {}, {}
  for i = 1, #fields, F do
    local id, payload, level, tenant, eta = fields[i], fields[i + 1], fields[i + 2], fields[i + 3], fields[i + 4]
    if duplicate[g][i] then
      -- a message sent again after a lost reply (it holds its own key): stored already, no duplicate
      if duplicate[g][i] ~= fields[i + 6] then
        duplicates = duplicates + 1
      end
    else
      count = count + 1
      if fields[i + 7] ~= "" then
        dedup_take(dedup, dedup_exp, deliveries, fields[i + 7], fields[i + 6], id, fields[i + 8], fields[i + 9], fifo_now())
        keyed = true
      end
      shed = shed + fields[i + F - 1] -- the last field: held back by load shedding
      eta = math.max(eta, over[g .. "|" .. tenant] or 0)
      tenant_pending(tenants, tenant, 1)
      bodies[#bodies + 1] = id
      bodies[#bodies + 1] = payload
      if fields[i + 5] > 0 then
        redis.call("hset", deliveries, id .. ":max", fields[i + 5])
      end
      if eta > now then
        redis.call("zadd", delayed, eta, id .. "|" .. level .. "|" .. tenant)
      else
        local run_key = level .. "|" .. tenant
        local run = runs[run_key]
        if not run then
          run = { level = level, tenant = tenant, ids = {} }
          runs[run_key] = run
          run_order[#run_order + 1] = run_key
        end
        run.ids[#run.ids + 1] = id
        ready = ready + 1
      end
    end
  end
  if count > 0 then
    hset_pairs(msgs, bodies)
    for _, run_key in ipairs(run_order) do
      local run = runs[run_key]
      fifo_push_run(b, run.level, run.tenant, run.ids)
    end
    redis.call("hincrby", stats, "enqueued_total", count)
    stored = stored + count
    -- Idle consumers wake for ready messages, and for a new delayed one so that they
    -- recompute how long to block.
    wake_up(b, ready > 0 and ready or 1)
  end
  if duplicates > 0 then
    redis.call("hincrby", stats, "duplicates_total", duplicates)
  end
  if keyed then
    dedup_sweep(dedup, dedup_exp, fifo_now())
  end
  if shed > 0 then
    redis.call("hincrby", stats, "shed_total", shed)
  end
end
reply[2] = stored
return reply
