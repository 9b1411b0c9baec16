-- detail: what operators see of a queue beyond its counters (`triage stats`, the web process):
-- its queued messages per priority level, the mean age of its queued messages (exact up to
-- ARGV[1] of them, else estimated from that many sampled at random), and how many tenants
-- are held back by their limits now. Reads only. Cost: O(FIFOs with messages + parked
-- tenants + the sample), whatever the number of messages.
--
-- KEYS:
--   state   KEYS[1]  {ns:Q}:state, hash "n|level|tenant" -> messages queued in that FIFO (read)
--   since   KEYS[2]  {ns:Q}:since, hash "level|seq|tenant" -> when that item became ready, ms (sampled)
--   parked  KEYS[3]  {ns:Q}:parked, zset "level|tenant" -> when that tenant may be served again (read)
-- ARGV: [1] the sample size for the mean age
-- Returns: {queued at levels BOTTOM_LEVEL .. TOP_LEVEL (one number each), items sampled,
--           their ages summed (ms, by Redis's clock), tenants held back}

local state = KEYS[1]
local since = KEYS[2]
local parked = KEYS[3]
local per_level = {}
for level = BOTTOM_LEVEL, TOP_LEVEL do
  per_level[level] = 0
end
local fields = redis.call("hgetall", state)
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == "n|" then
    local bar = string.find(name, "|", 3, true)
    local level = tonumber(string.sub(name, 3, bar - 1))
    if level and per_level[level] then
      per_level[level] = per_level[level] + tonumber(fields[i + 1])
    end
  end
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sample = redis.call("hrandfield", since, tonumber(ARGV[1]), "WITHVALUES")
local age = 0
for i = 2, #sample, 2 do
  age = age + math.max(0, now - tonumber(sample[i]))
end
local tenants = {}
local held = 0
for _, member in ipairs(redis.call("zrange", parked, 0, -1)) do
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
