-- detail: what operators see of a queue beyond its counters (`triage stats`, the web process):
-- its queued messages per priority level, the mean age of its queued messages (exact up to
-- ARGV[1] of them, else estimated from that many sampled at random), and how many tenants
-- are held back by their limits now. Cost: O(levels + the sample + parked tenants), whatever
-- the number of messages: the per-level counts are the "q|level" counters _fifo.lua keeps.
-- Repair: when those counts do not add up to the queued items (messages queued or taken by a
-- worker of an earlier version, which keeps no such counter), they are recounted from the
-- FIFOs' own counts, once, and written back.
--
-- KEYS:
--   items   KEYS[1]  {ns:Q}:items, hash, one field per queued message (counted)
--   state   KEYS[2]  {ns:Q}:state, hash "q|level" and "n|level|tenant" counts (read; "q|" rewritten on repair)
--   since   KEYS[3]  {ns:Q}:since, hash "level|seq|tenant" -> when that item became ready, ms (sampled)
--   parked  KEYS[4]  {ns:Q}:parked, zset "level|tenant" -> when that tenant may be served again (read)
-- ARGV: [1] the sample size for the mean age
-- Returns: {queued at levels BOTTOM_LEVEL .. TOP_LEVEL (one number each), items sampled,
--           their ages summed (ms, by Redis's clock), tenants held back}

local items = KEYS[1]
local state = KEYS[2]
local since = KEYS[3]
local parked = KEYS[4]
local fields = {}
for level = BOTTOM_LEVEL, TOP_LEVEL do
  fields[#fields + 1] = "q|" .. level
end
local per_level = {}
local total = 0
for i, value in ipairs(redis.call("hmget", state, unpack(fields))) do
  per_level[BOTTOM_LEVEL + i - 1] = tonumber(value or "0")
  total = total + per_level[BOTTOM_LEVEL + i - 1]
end
if total ~= redis.call("hlen", items) then
  for level = BOTTOM_LEVEL, TOP_LEVEL do
    per_level[level] = 0
  end
  local all = redis.call("hgetall", state)
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == "n|" then
      local bar = string.find(name, "|", 3, true)
      local level = tonumber(string.sub(name, 3, bar - 1))
      if level and per_level[level] then
        per_level[level] = per_level[level] + tonumber(all[i + 1])
      end
    end
  end
  for level = BOTTOM_LEVEL, TOP_LEVEL do
    redis.call("hset", state, "q|" .. level, per_level[level])
  end
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sample = redis.call("hrandfield", since, tonumber(ARGV[1]), "WITHVALUES")
local age = 0
for i = 2, #sample, 2 do
  age = age + math.max(0, now - tonumber(sample[i]))
end
-- Held back now: parked until a later time, or until a slot is released (scored SLOT_PARKED);
-- an entry already due but not yet taken back by a fetch is not held back.
local tenants = {}
local held = 0
for _, member in ipairs(redis.call("zrangebyscore", parked, "(" .. now, "+inf")) do
  local tenant = string.sub(member, string.find(member, "|", 1, true) + 1)
  if not tenants[tenant] then
    tenants[tenant] = true
    held = held + 1
  end
end
local reply = {}
for level = BOTTOM_LEVEL, TOP_LEVEL do
  reply[#reply + 1] = per_level[level]
end
reply[#reply + 1] = #sample / 2
reply[#reply + 1] = age
reply[#reply + 1] = held
return reply
