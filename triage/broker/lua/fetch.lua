-- fetch: move due delayed messages to their queue, then take up to N messages, the highest
-- priority level first, round-robin across tenants within a level, and record them as in
-- flight for this consumer.
--
-- Tenant limits (_tenants.lua): a tenant over its rate or in-flight limit is parked rather than
-- served; its FIFO stays in place. Due parked tenants go back to their rr:level first.
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then seven more.
--   msgs        KEYS[b + MSGS]     {ns:Q}:msgs, hash id -> encoded message (read)
--   delayed     KEYS[b + DELAYED]  {ns:Q}:delayed, zset "id|level|tenant" scored by eta
--   stats       KEYS[b + STATS]    {ns:Q}:stats (running, fetched_total)
--   paused      KEYS[b + PAUSED]   {ns:Q}:paused (read: nothing is handed out while it exists)
--   wake        KEYS[b + WAKE]     {ns:Q}:wake (a token when a tenant's slot is given back unused)
--   acks        KEYS[BLOCK + 1]    {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[BLOCK + 2]    {ns:Q}:deliveries, hash id -> deliveries so far (and "id:max" -> its own limit)
--   retrying    KEYS[BLOCK + 3]    {ns:Q}:retrying, zset id -> eta of the delayed messages that are retries
--   tenants     KEYS[BLOCK + 4]    {ns:Q}:tenants, per-tenant in flight, tokens, parked levels (_tenants.lua)
--   parked      KEYS[BLOCK + 5]    {ns:Q}:parked, zset "level|tenant" -> when it may be served again
--   limits      KEYS[BLOCK + 6]    {ns:Q}:limits, hash tenant -> its own "rpm|burst|max_in_flight" (read)
--   tenants_idle KEYS[BLOCK + 7]   {ns:Q}:tenants.idle, zset tenant -> since when it is idle (_tenants.lua)
--   state and rr:level are read, and items written, by the _fifo.lua helpers too.
-- ARGV: now_ms, max_messages, max_due_moved, then the queue's default tenant limits: rpm, burst,
--   max_in_flight (0: none), then how long a tenant stays idle before its bookkeeping is
--   forgotten, in ms (absent: never; at most TENANT_SWEEP_PER_FETCH tenants per fetch)
-- Writes: items, state, delayed, retrying (due ones leave it), stats (running, fetched_total), rr:*,
--   acks, deliveries, tenants, parked, tenants.idle
-- Returns: { {id1, message1, deliveries1, ready1, id2, ...}, when to look again (the next delayed
--   message's eta or the next parked tenant's time, whichever is first) or -1,
--   1 if the last message is a suspect else 0, the next delayed message's eta alone or -1,
--   how many messages acks records for this consumer now, these included }
--   The last lets the consumer see that an earlier fetch's reply was lost (more recorded than it
--   holds) and give those messages back (holding.py).
--   ready: when the message became ready to run (ms, Redis's clock): its enqueue, or its eta.
--   A suspect is a message delivered before and never settled: it was in flight on a worker
--   that died. It is handed out alone, and its consumer fetches nothing more until it is
--   settled, so a poison message cannot drag healthy neighbours into its crash loop.
--   Nothing is returned while the queue is paused; due delayed messages still move.

local b = 0
local msgs = KEYS[b + MSGS]
local delayed = KEYS[b + DELAYED]
local stats = KEYS[b + STATS]
local paused = KEYS[b + PAUSED]
local wake = KEYS[b + WAKE]
local acks = KEYS[BLOCK + 1]
local deliveries = KEYS[BLOCK + 2]
local retrying = KEYS[BLOCK + 3]
local tenants = KEYS[BLOCK + 4]
local parked = KEYS[BLOCK + 5]
local limits = KEYS[BLOCK + 6]
local tenants_idle = KEYS[BLOCK + 7]
local now = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local rpm, burst, max_in_flight = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local idle_ms = tonumber(ARGV[7] or "0")
local limited = rpm > 0 or max_in_flight > 0 or redis.call("exists", limits) == 1
local PARKS_PER_FETCH = 1000 -- a fetch parks at most this many tenants (the rest wait for the next)
local parks = 0

local due_scored = redis.call("zrangebyscore", delayed, "-inf", now, "WITHSCORES", "LIMIT", 0, tonumber(ARGV[3]))
local due, moved = {}, {}
for i = 1, #due_scored, 2 do
  local member = due_scored[i]
  local id, level, tenant = split_member(member)
  fifo_push(b, level, tenant, id, false, math.min(tonumber(due_scored[i + 1]), fifo_now())) -- waiting since its eta
  due[#due + 1] = member
  moved[#moved + 1] = id
end
if #due > 0 then
  redis.call("zrem", delayed, unpack(due))
  redis.call("zrem", retrying, unpack(moved))
end

-- Parked tenants that are due go back to the end of their level's round-robin.
local unparked = redis.call("zrangebyscore", parked, "-inf", now, "LIMIT", 0, tonumber(ARGV[3]))
if #unparked > 0 then
  redis.call("zrem", parked, unpack(unparked))
  for _, member in ipairs(unparked) do
    local bar = string.find(member, "|", 1, true)
    fifo_requeue_tenant(b, tonumber(string.sub(member, 1, bar - 1)), string.sub(member, bar + 1))
  end
end

local out = {}
local suspect = 0
if redis.call("exists", paused) == 0 then
  local level = TOP_LEVEL
  local taken = 0
  while taken < wanted and level >= BOTTOM_LEVEL and parks < PARKS_PER_FETCH do
    local id, tenant, ready_at = fifo_pop(b, level, function(candidate)
      if not limited or tenant_admit(tenants, parked, limits, tenants_idle, candidate, level, now, rpm, burst, max_in_flight) then
        return true
      end
      parks = parks + 1
      return false
    end)
    if id == false then
      -- the tenant whose turn it was is parked: try the next one of this level
    elseif id then
      local payload = redis.call("hget", msgs, id)
      if not payload then  -- its body is gone: give back the slot it took, and its pending count
        tenant_release(tenants, parked, wake, tenant)
        tenant_done(tenants, tenants_idle, tenant)
      else
        local count = redis.call("hincrby", deliveries, id, 1)
        if count > 1 and taken > 0 then
          -- A suspect (reclaimed from a dead worker) travels alone: leave it for the next fetch.
          redis.call("hincrby", deliveries, id, -1)
          fifo_push(b, level, tenant, id, true, ready_at)
          tenant_release(tenants, parked, wake, tenant)
          break
        end
        local seq = redis.call("hincrby", stats, "fetched_total", 1)
        redis.call("hset", acks, id, seq .. "|" .. level .. "|" .. tenant)
        out[#out + 1] = id
        out[#out + 1] = payload
        out[#out + 1] = count
        out[#out + 1] = ready_at
        taken = taken + 1
        if count > 1 then
          suspect = 1
          break
        end
      end
    else
      level = level - 1
    end
  end
  if taken > 0 then
    redis.call("hincrby", stats, "running", taken)
  end
end

if idle_ms > 0 then
  tenant_sweep(tenants, parked, limits, tenants_idle, now, idle_ms, rpm, burst)
end

local next_delayed = tonumber(redis.call("zrange", delayed, 0, 0, "WITHSCORES")[2] or -1)
local next_eta = next_delayed
local next_parked = tonumber(redis.call("zrange", parked, 0, 0, "WITHSCORES")[2] or -1)
if parks >= PARKS_PER_FETCH or (next_parked >= 0 and next_parked <= now) then
  next_eta = now -- more tenants to look at, or released ones due: look again at once
elseif next_parked > 0 and next_parked < SLOT_PARKED and (next_eta < 0 or next_parked < next_eta) then
  next_eta = next_parked
end
return { out, next_eta, suspect, next_delayed, redis.call("hlen", acks) }
