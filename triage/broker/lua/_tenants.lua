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
-- A parked tenant is out of rr:level and its FIFO stays as it is: nothing is re-enqueued, no
-- retry is used, and a fetch does not look at it again until it is due. The shared tenant ""
-- (messages sent without one) is never limited. SLOT_PARKED comes from the generated header.

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

-- The limits of `tenant`: its own, else the queue's defaults (rpm, burst, max_in_flight,
-- max_pending; 0: none).
local function tenant_limits(limits, tenant, rpm, burst, max_in_flight, max_pending)
  local own = redis.call("hget", limits, tenant)
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

-- Count `delta` messages of `tenant` into (or out of) the queue's pending ones.
local function tenant_pending(tenants, tenant, delta)
  if tenant == "" then
    return
  end
  if redis.call("hincrby", tenants, "p|" .. tenant, delta) <= 0 then
    redis.call("hdel", tenants, "p|" .. tenant)
  end
end

-- May `tenant` have one more message of `level` now? If not, park it (it was just popped off
-- rr:level) until it may, count the throttle, and return false. If so, take a token and count
-- the message in flight.
local function tenant_admit(tenants, parked, limits, tenant, level, now, rpm, burst, max_in_flight)
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
    redis.call("hincrby", tenants, "x|" .. tenant, 1)
    return false
  end
  if rpm > 0 then
    burst = math.max(1, burst)
    local tokens = tonumber(redis.call("hget", tenants, "k|" .. tenant) or burst)
    local last = tonumber(redis.call("hget", tenants, "u|" .. tenant) or now)
    tokens = math.min(burst, tokens + math.max(0, now - last) * rpm / 60000)
    now = math.max(now, last) -- a worker whose clock is behind must not refill the bucket twice
    if tokens < 1 then
      redis.call("hset", tenants, "k|" .. tenant, tokens, "u|" .. tenant, now)
      redis.call("zadd", parked, now + math.ceil((1 - tokens) * 60000 / rpm), level .. "|" .. tenant)
      redis.call("hincrby", tenants, "x|" .. tenant, 1)
      return false
    end
    redis.call("hset", tenants, "k|" .. tenant, tokens - 1, "u|" .. tenant, now)
  end
  if rpm > 0 or max_in_flight > 0 then
    redis.call("hincrby", tenants, "f|" .. tenant, 1)
  end
  return true
end
