-- _tenants: per-tenant dispatch limits of a queue (a token bucket and an in-flight cap per
-- tenant), shared by the scripts that fetch and settle. The keys, all under the queue's hash
-- tag and passed by each script (its header names them):
--   tenants  {ns:Q}:tenants  hash  "f|t" messages of tenant t in flight (fetched, not settled);
--                                  "k|t", "u|t" its bucket's tokens and last refill (ms);
--                                  "s|t" the levels parked for want of an in-flight slot (",5,7,");
--                                  "x|t" how many times it was held back (throttled_total);
--                                  "p|t" its messages pending: queued, delayed or in flight (admission);
--                                  "d|t", "a|t" its sends refused, and deferred, by admission
--   parked   {ns:Q}:parked   zset  "level|t" -> when the tenant may be served again at that level
--                                  (SLOT_PARKED: when one of its messages in flight settles)
--   limits   {ns:Q}:limits   hash  t -> "rpm|burst|max_in_flight|max_pending", a tenant's own limits;
--                                  "*" the queue's defaults (written by workers, read by operators)
--   tenants_idle {ns:Q}:tenants.idle zset  t -> since when it is idle (ms, Redis's clock), for every
--                                  tenant with fields that outlive its messages (k|, u|, x|, d|, a|)
-- A parked tenant is out of rr:level and its FIFO stays as it is: nothing is re-enqueued, no
-- retry is used, and a fetch does not look at it again until it is due. The shared tenant ""
-- (messages sent without one) is never limited. SLOT_PARKED and TENANT_SWEEP_PER_FETCH come from
-- the generated header.
--
-- Forgetting idle tenants: "p|t" and "f|t" go when they reach zero, but a tenant's bucket and
-- counters would stay for ever. So a tenant is put in tenants_idle when one of those fields is
-- first written (or it is refused or deferred), and its time there moves to "now" when its last
-- pending message settles. A fetch (tenant_sweep) looks at the few whose time is older than the
-- idle time and forgets each whose bookkeeping says nothing a fresh start would not: nothing
-- pending, nothing in flight, its bucket full again. Any other is looked at again one idle time
-- later. The hot path pays one ZADD XX when a tenant's last message settles (a lookup that finds
-- nothing for a tenant not tracked) and one ZRANGEBYSCORE per fetch.

local TENANT_LOOKED_AT = { "p|", "f|", "k|", "u|", "s|" } -- the fields the sweep reads, in this order
local TENANT_COUNTERS = { "x|", "d|", "a|" } -- and those it deletes unread

-- One in-flight slot of `tenant` is free again (its message was acked, dead-lettered, retried,
-- deferred, given back or reclaimed): count it, make its slot-parked levels due, and wake a
-- consumer to serve them.
local function tenant_release(tenants, parked, wake, tenant)
  if tenant == "" or redis.call("hexists", tenants, "f|" .. tenant) == 0 then
    return
  end
  if redis.call("hincrby", tenants, "f|" .. tenant, -1) <= 0 then
    redis.call("hdel", tenants, "f|" .. tenant)
  end
  local levels = redis.call("hget", tenants, "s|" .. tenant)
  if levels then
    redis.call("hdel", tenants, "s|" .. tenant)
    for level in string.gmatch(levels, "%d+") do
      redis.call("zadd", parked, "XX", 0, level .. "|" .. tenant)  -- due at once
    end
    if redis.call("llen", wake) < WAKE_TOKENS_MAX then
      redis.call("rpush", wake, "1")
    end
  end
end

-- The limits of `tenant`: its own (`own`, as stored in limits, or false), else the queue's
-- defaults (rpm, burst, max_in_flight, max_pending; 0: none); tenant_limits reads them.
local function tenant_limits_of(own, rpm, burst, max_in_flight, max_pending)
  if own then
    local values = {}
    for value in string.gmatch(own, "[^|]+") do
      values[#values + 1] = tonumber(value)
    end
    if #values == 4 and values[1] and values[2] and values[3] and values[4] then
      return values[1], values[2], values[3], values[4]
    end -- malformed: the queue's defaults rather than an error that would strand the tenant
  end
  return rpm, burst, max_in_flight, max_pending
end

local function tenant_limits(limits, tenant, rpm, burst, max_in_flight, max_pending)
  return tenant_limits_of(redis.call("hget", limits, tenant), rpm, burst, max_in_flight, max_pending)
end

-- `tenant` has bookkeeping that outlives its messages: from now, it is looked at once idle.
local function tenant_track(tenants_idle, tenant)
  redis.call("zadd", tenants_idle, fifo_now(), tenant)
end

-- Count `n` new messages of `tenant` into the queue's pending ones.
local function tenant_pending(tenants, tenant, n)
  if tenant ~= "" then
    redis.call("hincrby", tenants, "p|" .. tenant, n)
  end
end

-- One message of `tenant` is no longer pending here (settled, dead-lettered, moved away). With
-- its last, the tenant is idle from now, if it is tracked (XX: nothing is added otherwise).
local function tenant_done(tenants, tenants_idle, tenant)
  if tenant ~= "" and redis.call("hincrby", tenants, "p|" .. tenant, -1) <= 0 then
    redis.call("hdel", tenants, "p|" .. tenant)
    redis.call("zadd", tenants_idle, "XX", fifo_now(), tenant)
  end
end

-- May `tenant` have one more message of `level` now? If not, park it (it was just popped off
-- rr:level) until it may, count the throttle, and return false. If so, take a token and count
-- the message in flight.
local function tenant_admit(tenants, parked, limits, tenants_idle, tenant, level, now, rpm, burst, max_in_flight)
  if tenant == "" then
    return true
  end
  rpm, burst, max_in_flight = tenant_limits(limits, tenant, rpm, burst, max_in_flight, 0)
  if max_in_flight > 0 and tonumber(redis.call("hget", tenants, "f|" .. tenant) or "0") >= max_in_flight then
    local levels = redis.call("hget", tenants, "s|" .. tenant) or ","
    if not string.find(levels, "," .. level .. ",", 1, true) then
      redis.call("hset", tenants, "s|" .. tenant, levels .. level .. ",")
    end
    redis.call("zadd", parked, SLOT_PARKED, level .. "|" .. tenant)
    if redis.call("hincrby", tenants, "x|" .. tenant, 1) == 1 then
      tenant_track(tenants_idle, tenant)
    end
    return false
  end
  if rpm > 0 then
    burst = math.max(1, burst)
    local stored = redis.call("hget", tenants, "k|" .. tenant)
    if not stored then
      tenant_track(tenants_idle, tenant) -- a new bucket
    end
    local tokens = tonumber(stored or burst)
    local last = tonumber(redis.call("hget", tenants, "u|" .. tenant) or now)
    tokens = math.min(burst, tokens + math.max(0, now - last) * rpm / 60000)
    now = math.max(now, last) -- a worker whose clock is behind must not refill the bucket twice
    if tokens < 1 then
      redis.call("hset", tenants, "k|" .. tenant, tokens, "u|" .. tenant, now)
      redis.call("zadd", parked, now + math.ceil((1 - tokens) * 60000 / rpm), level .. "|" .. tenant)
      if redis.call("hincrby", tenants, "x|" .. tenant, 1) == 1 then
        tenant_track(tenants_idle, tenant)
      end
      return false
    end
    redis.call("hset", tenants, "k|" .. tenant, tokens - 1, "u|" .. tenant, now)
  end
  if rpm > 0 or max_in_flight > 0 then
    redis.call("hincrby", tenants, "f|" .. tenant, 1)
  end
  return true
end

-- Forget the tenants idle for `idle_ms` or more (at most TENANT_SWEEP_PER_FETCH of them), with
-- all their fields and slot-parked levels, unless something is pending or in flight or their
-- bucket has not refilled yet at `now` (the fetch's clock, the bucket's): those are looked at
-- again one idle time from now. Forgetting loses nothing a limit needs: a tenant that comes
-- back starts with zero counts and a full bucket, as it would have found them.
local function tenant_sweep(tenants, parked, limits, tenants_idle, now, idle_ms, rpm, burst)
  local clock = fifo_now()
  local stale = redis.call("zrangebyscore", tenants_idle, "-inf", clock - idle_ms, "LIMIT", 0, TENANT_SWEEP_PER_FETCH)
  if #stale == 0 then
    return
  end
  local fields = {}
  for _, tenant in ipairs(stale) do
    for _, kind in ipairs(TENANT_LOOKED_AT) do
      fields[#fields + 1] = kind .. tenant
    end
  end
  local values = redis.call("hmget", tenants, unpack(fields)) -- p, f, k, u, s of each tenant
  local n = #TENANT_LOOKED_AT
  local idle, buckets = {}, {} -- nothing pending or in flight; of those, with a bucket
  for i, tenant in ipairs(stale) do
    local at = (i - 1) * n
    idle[i] = not (values[at + 1] or values[at + 2])
    if idle[i] and values[at + 3] then
      buckets[#buckets + 1] = tenant
    end
  end
  if #buckets > 0 then -- a bucket still refilling keeps its tenant (its own rate, else the default)
    local own = redis.call("hmget", limits, unpack(buckets))
    local b = 1
    for i, tenant in ipairs(stale) do
      local at = (i - 1) * n
      if buckets[b] == tenant and idle[i] then
        local own_rpm, own_burst = tenant_limits_of(own[b], rpm, burst, 0, 0)
        local tokens = tonumber(values[at + 3]) + math.max(0, now - tonumber(values[at + 4] or now)) * own_rpm / 60000
        idle[i] = own_rpm <= 0 or tokens >= math.max(1, own_burst)
        b = b + 1
      end
    end
  end
  local keep, forget, gone_fields, gone_parked = {}, {}, {}, {}
  for i, tenant in ipairs(stale) do
    local at = (i - 1) * n
    if idle[i] then
      forget[#forget + 1] = tenant
      for j = 3, n do -- k, u, s (p and f are absent)
        if values[at + j] then
          gone_fields[#gone_fields + 1] = fields[at + j]
        end
      end
      for _, kind in ipairs(TENANT_COUNTERS) do
        gone_fields[#gone_fields + 1] = kind .. tenant
      end
      for level in string.gmatch(values[at + 5] or "", "%d+") do
        gone_parked[#gone_parked + 1] = level .. "|" .. tenant
      end
    else
      keep[#keep + 1] = clock
      keep[#keep + 1] = tenant
    end
  end
  if #keep > 0 then
    redis.call("zadd", tenants_idle, unpack(keep))
  end
  if #forget > 0 then
    redis.call("hdel", tenants, unpack(gone_fields))
    redis.call("zrem", tenants_idle, unpack(forget))
  end
  if #gone_parked > 0 then
    redis.call("zrem", parked, unpack(gone_parked))
  end
end
