-- fetch: move due delayed messages to their queue, then take up to N messages, the highest
-- priority level first, round-robin across tenants within a level, and record them as in
-- flight for this consumer.
--
-- KEYS: the queue's block at b = 0 (KEYS[1] .. KEYS[BLOCK], laid out in _fifo.lua), then three more.
--   msgs        KEYS[b + MSGS]     {ns:Q}:msgs, hash id -> encoded message (read)
--   delayed     KEYS[b + DELAYED]  {ns:Q}:delayed, zset "id|level|tenant" scored by eta
--   stats       KEYS[b + STATS]    {ns:Q}:stats (running, fetched_total)
--   paused      KEYS[b + PAUSED]   {ns:Q}:paused (read: nothing is handed out while it exists)
--   acks        KEYS[BLOCK + 1]    {ns:Q}:acks:<consumer id>, hash id -> "fetch seq|level|tenant"
--   deliveries  KEYS[BLOCK + 2]    {ns:Q}:deliveries, hash id -> deliveries so far (and "id:max" -> its own limit)
--   retrying    KEYS[BLOCK + 3]    {ns:Q}:retrying, zset id -> eta of the delayed messages that are retries
--   items, state and rr:level are read and written by the _fifo.lua helpers.
-- ARGV: now_ms, max_messages, max_due_moved
-- Writes: items, state, delayed, retrying (due ones leave it), stats (running, fetched_total), rr:*,
--   acks, deliveries
-- Returns: { {id1, message1, deliveries1, id2, ...}, eta of the next delayed message or -1,
--   1 if the last message is a suspect else 0 }
--   A suspect is a message delivered before and never settled: it was in flight on a worker
--   that died. It is handed out alone, and its consumer fetches nothing more until it is
--   settled, so a poison message cannot drag healthy neighbours into its crash loop.
--   Nothing is returned while the queue is paused; due delayed messages still move.

local b = 0
local msgs = KEYS[b + MSGS]
local delayed = KEYS[b + DELAYED]
local stats = KEYS[b + STATS]
local paused = KEYS[b + PAUSED]
local acks = KEYS[BLOCK + 1]
local deliveries = KEYS[BLOCK + 2]
local retrying = KEYS[BLOCK + 3]
local now = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])

local due = redis.call("zrangebyscore", delayed, "-inf", now, "LIMIT", 0, tonumber(ARGV[3]))
local moved = {}
for _, member in ipairs(due) do
  local id, level, tenant = split_member(member)
  fifo_push(b, level, tenant, id, false)
  moved[#moved + 1] = id
end
if #due > 0 then
  redis.call("zrem", delayed, unpack(due))
  redis.call("zrem", retrying, unpack(moved))
end

local out = {}
local suspect = 0
if redis.call("exists", paused) == 0 then
  local level = TOP_LEVEL
  local taken = 0
  while taken < wanted and level >= BOTTOM_LEVEL do
    local id, tenant = fifo_pop(b, level)
    if id then
      local payload = redis.call("hget", msgs, id)
      if payload then
        local count = redis.call("hincrby", deliveries, id, 1)
        if count > 1 and taken > 0 then
          -- A suspect (reclaimed from a dead worker) travels alone: leave it for the next fetch.
          redis.call("hincrby", deliveries, id, -1)
          fifo_push(b, level, tenant, id, true)
          break
        end
        local seq = redis.call("hincrby", stats, "fetched_total", 1)
        redis.call("hset", acks, id, seq .. "|" .. level .. "|" .. tenant)
        out[#out + 1] = id
        out[#out + 1] = payload
        out[#out + 1] = count
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

local next_eta = redis.call("zrange", delayed, 0, 0, "WITHSCORES")
return { out, next_eta[2] or -1, suspect }
