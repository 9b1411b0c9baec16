-- enqueue: store messages and place them by priority and tenant, or in the delayed set,
-- for one or more queues, all or nothing (one script call is atomic).
--
-- KEYS: one 18-key block per queue, queue g at offset 18*(g-1): the 17 placement keys (msgs,
--   items, state, delayed, stats, paused, wake, rr:1 .. rr:10; see _placement.lua), then
--   {ns:Q}:deliveries (where a message's own max_deliveries is kept, if it has one)
-- ARGV: 1 now_ms, 2 a msgpack array with one entry per queue, in KEYS order, each a flat array
--   of id, encoded message, level (1-10), tenant ("" for the shared tenant), eta_ms (0: now),
--   max_deliveries (0: the queue's default), repeated for each message (one argument for the
--   whole batch keeps the call cheap)
-- Writes: msgs, items, state, delayed, stats (enqueued_total), wake, rr:*, deliveries
-- Returns: the number of messages stored.

local now = tonumber(ARGV[1])
local groups = cmsgpack.unpack(ARGV[2])
local stored = 0
for g, fields in ipairs(groups) do
  local b = (BLOCK + 1) * (g - 1)
  local ready = 0
  local count = #fields / 6
  for i = 1, #fields, 6 do
    local id, payload, level, tenant, eta = fields[i], fields[i + 1], fields[i + 2], fields[i + 3], fields[i + 4]
    redis.call("hset", KEYS[b + 1], id, payload)
    if fields[i + 5] > 0 then
      redis.call("hset", KEYS[b + BLOCK + 1], id .. ":max", fields[i + 5])
    end
    if eta > now then
      redis.call("zadd", KEYS[b + 4], eta, id .. "|" .. level .. "|" .. tenant)
    else
      fifo_push(b, level, tenant, id, false)
      ready = ready + 1
    end
  end
  redis.call("hincrby", KEYS[b + 5], "enqueued_total", count)
  stored = stored + count
  -- Idle consumers wake for ready messages, and for a new delayed one so that they
  -- recompute how long to block.
  wake(b, ready > 0 and ready or 1)
end
return stored
