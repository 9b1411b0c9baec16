-- _dead: the dead letters of a queue, shared by the scripts that add, trim or remove them
-- (scripts.py loads it after the header, for the scripts that use it). The helpers take
-- their keys from the caller, which names them from KEYS (dead_letter also takes the queue's
-- msgs and deliveries, which the message leaves):
--   dead       {ns:Q}:dead       zset    id -> time dead-lettered (ms)
--   dead_msgs  {ns:Q}:dead.msgs  hash    id -> the encoded message, as it was sent
--   dead_info  {ns:Q}:dead.info  hash    id -> JSON record: reason, error {type, message, traceback},
--                                         actor, queue, tenant, priority, message_id, attempts,
--                                         deliveries, first_failure_ms, dead_lettered_at_ms
--   dead_idx   {ns:Q}:dead.idx   zset    every member scored 0, for lexicographic ranges:
--                                         "dim \0 value \0 time \0 id", time 13 digits, dim one of
--                                         "*" (every entry, value ""), "a" actor, "t" tenant,
--                                         "e" error type, "r" reason, "g" actor \1 error type \1 reason
--   stats      {ns:Q}:stats      hash    dead_total, dead:<reason>, dead_trimmed_total (counters)
-- Every dead letter has its six index members; adding and removing one is O(log n).

local DEAD_TRIM_MAX = 1000 -- entries one call may drop for retention (the rest go on the next calls)

-- A string field, or "" (JSON null decodes to a userdata, a missing one to nil).
local function text(value)
  if type(value) == "string" then
    return value
  end
  return ""
end

-- The fields of an encoded message (msgpack, or JSON when it starts with "{"), or {} if it
-- cannot be decoded.
local function message_fields(payload)
  if not payload then
    return {}
  end
  local ok, decoded = pcall(function()
    if string.sub(payload, 1, 1) == "{" then
      return cjson.decode(payload)
    end
    return cmsgpack.unpack(payload)
  end)
  if ok and type(decoded) == "table" then
    return decoded
  end
  return {}
end

-- The record of a dead letter: what the caller says (reason, error, queue, ...), completed
-- from the message itself.
local function dead_record(payload, info, deliveries, now)
  local message = message_fields(payload)
  local options = message.options
  if type(options) ~= "table" then
    options = {}
  end
  if text(info.actor) == "" then
    info.actor = text(message.actor_name)
  end
  if text(info.queue) == "" then
    info.queue = text(message.queue_name)
  end
  info.message_id = text(message.message_id)
  info.tenant = text(options.tenant)
  info.priority = tonumber(options.priority)
  info.attempts = (tonumber(options.retries) or 0) + 1
  info.deliveries = deliveries
  info.first_failure_ms = tonumber(options.triage_first_failure_ms) or now
  return info
end

local function dead_index(record, id)
  local err = ""
  if type(record.error) == "table" then
    err = text(record.error.type)
  end
  local actor, reason = text(record.actor), text(record.reason)
  local tail = "\0" .. string.format("%013d", record.dead_lettered_at_ms) .. "\0" .. id
  return {
    "*\0" .. tail,
    "a\0" .. actor .. tail,
    "t\0" .. text(record.tenant) .. tail,
    "e\0" .. err .. tail,
    "r\0" .. reason .. tail,
    "g\0" .. actor .. "\1" .. err .. "\1" .. reason .. tail,
  }
end

-- Keep a message as a dead letter, with its record, indexed, and counted by reason.
local function dead_add(dead, dead_msgs, dead_info, dead_idx, stats, id, payload, record, now)
  record.dead_lettered_at_ms = now
  if payload then
    redis.call("hset", dead_msgs, id, payload)
  end
  redis.call("hset", dead_info, id, cjson.encode(record))
  redis.call("zadd", dead, now, id)
  for _, member in ipairs(dead_index(record, id)) do
    redis.call("zadd", dead_idx, 0, member)
  end
  redis.call("hincrby", stats, "dead_total", 1)
  redis.call("hincrby", stats, "dead:" .. text(record.reason), 1)
end

-- Move an in-flight message to the dead letters: its encoded message and delivery count are
-- read from msgs and deliveries (and forgotten there), its record completed from the message.
local function dead_letter(msgs, deliveries, dead, dead_msgs, dead_info, dead_idx, stats, id, info, now)
  local payload = redis.call("hget", msgs, id)
  local count = tonumber(redis.call("hget", deliveries, id) or "0")
  local record = dead_record(payload, info, count, now)
  dead_add(dead, dead_msgs, dead_info, dead_idx, stats, id, payload, record, now)
  redis.call("hdel", msgs, id)
  redis.call("hdel", deliveries, id, id .. ":max")
end

-- Drop one dead letter; its encoded message ("" if it had none), or false if it was not there.
local function dead_remove(dead, dead_msgs, dead_info, dead_idx, id)
  local info = redis.call("hget", dead_info, id)
  if not info then
    return false
  end
  for _, member in ipairs(dead_index(cjson.decode(info), id)) do
    redis.call("zrem", dead_idx, member)
  end
  local payload = redis.call("hget", dead_msgs, id)
  redis.call("hdel", dead_info, id)
  redis.call("hdel", dead_msgs, id)
  redis.call("zrem", dead, id)
  return payload or ""
end

-- Retention, oldest first: those older than max_age_ms, then those beyond max_entries (0: no
-- limit), at most DEAD_TRIM_MAX a call; each one counted in dead_trimmed_total.
local function dead_trim(dead, dead_msgs, dead_info, dead_idx, stats, now, max_entries, max_age_ms)
  local victims = {}
  if max_age_ms > 0 then
    victims = redis.call("zrangebyscore", dead, "-inf", now - max_age_ms, "LIMIT", 0, DEAD_TRIM_MAX)
  end
  if max_entries > 0 then
    local over = math.min(redis.call("zcard", dead) - #victims - max_entries, DEAD_TRIM_MAX - #victims)
    if over > 0 then
      for _, id in ipairs(redis.call("zrange", dead, #victims, #victims + over - 1)) do
        victims[#victims + 1] = id
      end
    end
  end
  for _, id in ipairs(victims) do
    dead_remove(dead, dead_msgs, dead_info, dead_idx, id)
  end
  if #victims > 0 then
    redis.call("hincrby", stats, "dead_trimmed_total", #victims)
  end
  return #victims
end
