-- fetch: move due delayed messages to their queue, then take up to N messages, the highest
-- priority level first, round-robin across tenants within a level, and record them as in
-- flight for this consumer.
--
-- KEYS: the queue's 17-key block (msgs, items, state, delayed, stats, paused, wake,
--   rr:1 .. rr:10), then 18: {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant",
--   19: {ns:Q}:deliveries, hash id -> deliveries so far (and "id:max" -> its own limit)
-- ARGV: now_ms, max_messages, max_due_moved
-- Writes: items, state, delayed, stats (running, fetched_total), rr:*, acks, deliveries
-- Returns: { {id1, message1, deliveries1, id2, ...}, eta of the next delayed message or -1 }
--   Nothing is returned while the queue is paused; due delayed messages still move.

local b = 0
local now = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local acks = KEYS[18]
local deliveries = KEYS[19]

local due = redis.call("zrangebyscore", KEYS[4], "-inf", now, "LIMIT", 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  local id, level, tenant = split_member(member)
  fifo_push(b, level, tenant, id, false)
end
if #due > 0 then
  redis.call("zrem", KEYS[4], unpack(due))
end

local out = {}
if redis.call("exists", KEYS[6]) == 0 then
  local level = 10
  local taken = 0
  while taken < wanted and level >= 1 do
    local id, tenant = fifo_pop(b, level)
    if id then
      local payload = redis.call("hget", KEYS[1], id)
      if payload then
        local seq = redis.call("hincrby", KEYS[5], "fetched_total", 1)
        redis.call("hset", acks, id, seq .. "|" .. level .. "|" .. tenant)
        out[#out + 1] = id
        out[#out + 1] = payload
        out[#out + 1] = redis.call("hincrby", deliveries, id, 1)
        taken = taken + 1
      end
    else
      level = level - 1
    end
  end
  if taken > 0 then
    redis.call("hincrby", KEYS[5], "running", taken)
  end
end

local next_eta = redis.call("zrange", KEYS[4], 0, 0, "WITHSCORES")
return { out, next_eta[2] or -1 }
