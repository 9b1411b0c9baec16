-- _fifo: the FIFO / round-robin structure of a queue, shared by every script (scripts.py
-- loads it after the header that defines BLOCK, TOP_LEVEL and BOTTOM_LEVEL from Python).
--
-- A queue's keys form one block of BLOCK keys, all under the queue's hash tag {ns:Q}. A
-- script passes the block's offset b in KEYS to the helpers below, which name the keys
-- they use by their offset in the block:
--   b + MSGS        1        {ns:Q}:msgs      hash    message id -> encoded message (queued, delayed, in flight)
--   b + ITEMS       2        {ns:Q}:items     hash    "level|seq|tenant" -> message id, one per queued message
--   b + STATE       3        {ns:Q}:state     hash    "n|level|tenant" count, "h|..." head seq, "t|..." tail seq;
--                                                     "q|level" messages queued at that level (all tenants)
--   b + DELAYED     4        {ns:Q}:delayed   zset    "id|level|tenant" scored by eta (ms)
--   b + STATS       5        {ns:Q}:stats     hash    running, enqueued_total, fetched_total, acked_total, dead_total
--   b + PAUSED      6        {ns:Q}:paused    string  present while the queue is paused
--   b + WAKE        7        {ns:Q}:wake      list    wake-up tokens that idle consumers block on (BLPOP)
--   b + HEADS       8        {ns:Q}:heads     zset    "level|tenant" -> since when its oldest message waits (ms,
--                                                     Redis's clock), for each FIFO in a round-robin now
--   b + SINCE       9        {ns:Q}:since     hash    "level|seq|tenant" -> when that item became ready (ms)
--   b + RR + level  10 .. 19 {ns:Q}:rr:level  list    one per level 1 .. 10: the tenants that have work at that
--                                                     priority level, in round-robin order (each at most once)
-- The numbers hold for priorities 1 .. 10 (priority.py), where BLOCK = 19; tests/unit/test_lua_keys.py
-- checks them against keys.py.
-- Within a level and tenant, messages are FIFO (head and tail sequence numbers); across
-- tenants of a level, the fetch takes the tenant at the front of rr:level and puts it back
-- at the end if it has more work: O(1) per message, whatever the number of messages or
-- tenants. Scripts touch no key that is not in KEYS.
--
-- Skipping a tenant (over its in-flight or rate limit) needs no message to move: the fetch
-- pops the tenant from rr:level and parks it instead of pushing it back; when the tenant is
-- under its limit again it is pushed back onto rr:level, and its FIFO is where it was.
--
-- Waiting time: since holds when each item became ready (Redis's TIME, so one clock for every
-- producer), beside the item (items keep the bare id: a script of an earlier version reads
-- them as it always did); heads holds, for each FIFO a consumer could serve now (one in an
-- rr:level list), when its head item became ready. Its lowest score is how long the oldest
-- message that a consumer could take has waited: a parked tenant, held back on purpose, is
-- not in it, and a paused queue is for the reader to see. An item without a time (written
-- by an earlier version) reads as ready now.

local MSGS, ITEMS, STATE, DELAYED, STATS, PAUSED, WAKE, HEADS, SINCE = 1, 2, 3, 4, 5, 6, 7, 8, 9
local RR = SINCE + 1 - BOTTOM_LEVEL -- rr:level is KEYS[b + RR + level], level BOTTOM_LEVEL .. TOP_LEVEL
local WAKE_TOKENS_MAX = 64

-- Redis's clock in ms, read once per script call.
local fifo_clock
local function fifo_now()
  if not fifo_clock then
    local t = redis.call("time")
    fifo_clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return fifo_clock
end

-- When the item became ready (now for an item without a time).
local function fifo_since(b, item)
  local since = KEYS[b + SINCE]
  return tonumber(redis.call("hget", since, item) or "") or fifo_now()
end

-- Put a message at the tail of its level and tenant (at the head with `front`: a message given
-- back). `at`: when it became ready (default now). A message put at the head counts as
-- waiting since the FIFO's head did, if that is earlier, so that giving messages back never
-- makes the older ones behind them look younger.
local function fifo_push(b, level, tenant, id, front, at)
  local items = KEYS[b + ITEMS]
  local state = KEYS[b + STATE]
  local heads = KEYS[b + HEADS]
  local since = KEYS[b + SINCE]
  local rr = KEYS[b + RR + level]
  local suffix = level .. "|" .. tenant
  at = at or fifo_now()
  redis.call("hincrby", state, "q|" .. level, 1)
  local n = redis.call("hincrby", state, "n|" .. suffix, 1)
  local seq
  if n == 1 then
    seq = 0
    redis.call("hset", state, "h|" .. suffix, 0, "t|" .. suffix, 0)
  elseif front then
    local head = redis.call("hget", state, "h|" .. suffix)
    at = math.min(at, fifo_since(b, level .. "|" .. head .. "|" .. tenant))
    seq = redis.call("hincrby", state, "h|" .. suffix, -1)
  else
    seq = redis.call("hincrby", state, "t|" .. suffix, 1)
  end
  local item = level .. "|" .. seq .. "|" .. tenant
  redis.call("hset", items, item, id)
  redis.call("hset", since, item, at)
  if n == 1 then
    redis.call("zadd", heads, at, suffix)
    if front then
      redis.call("lpush", rr, tenant)
    else
      redis.call("rpush", rr, tenant)
    end
  elseif front then
    redis.call("zadd", heads, "XX", at, suffix) -- a new head; a parked FIFO stays out of heads
  end
end

-- HSET of many field/value pairs, in chunks that stay within Lua's stack for unpack().
local function hset_pairs(key, pairs)
  for start = 1, #pairs, 2000 do
    redis.call("hset", key, unpack(pairs, start, math.min(start + 1999, #pairs)))
  end
end

-- Append several messages, in order, to the tail of one level and tenant (enqueue batches).
local function fifo_push_run(b, level, tenant, ids)
  local items = KEYS[b + ITEMS]
  local state = KEYS[b + STATE]
  local heads = KEYS[b + HEADS]
  local since = KEYS[b + SINCE]
  local rr = KEYS[b + RR + level]
  local suffix = level .. "|" .. tenant
  local at = fifo_now()
  redis.call("hincrby", state, "q|" .. level, #ids)
  local n = redis.call("hincrby", state, "n|" .. suffix, #ids)
  local first
  if n == #ids then
    first = 0
    redis.call("hset", state, "h|" .. suffix, 0, "t|" .. suffix, #ids - 1)
  else
    first = redis.call("hincrby", state, "t|" .. suffix, #ids) - #ids + 1
  end
  local fields, times = {}, {}
  for i, id in ipairs(ids) do
    local item = level .. "|" .. (first + i - 1) .. "|" .. tenant
    fields[#fields + 1] = item
    fields[#fields + 1] = id
    times[#times + 1] = item
    times[#times + 1] = at
  end
  hset_pairs(items, fields)
  hset_pairs(since, times)
  if n == #ids then
    redis.call("zadd", heads, at, suffix)
    redis.call("rpush", rr, tenant)
  end
end

-- Take the next message of a level: the oldest of the tenant whose turn it is. With `admit`,
-- a function of the tenant, a tenant it refuses stays off rr:level (parked by `admit`), its
-- FIFO untouched, and false is returned. Returns the id, the tenant and when it became ready.
local function fifo_pop(b, level, admit)
  local items = KEYS[b + ITEMS]
  local state = KEYS[b + STATE]
  local heads = KEYS[b + HEADS]
  local since = KEYS[b + SINCE]
  local rr = KEYS[b + RR + level]
  local tenant = redis.call("lpop", rr)
  if not tenant then
    return nil
  end
  local suffix = level .. "|" .. tenant
  if admit and not admit(tenant) then
    redis.call("zrem", heads, suffix)
    return false, tenant
  end
  local head = redis.call("hget", state, "h|" .. suffix)
  local item = level .. "|" .. head .. "|" .. tenant
  local id = redis.call("hget", items, item)
  local at = fifo_since(b, item)
  redis.call("hdel", items, item)
  redis.call("hdel", since, item)
  redis.call("hincrby", state, "q|" .. level, -1)
  if redis.call("hincrby", state, "n|" .. suffix, -1) > 0 then
    local after = redis.call("hincrby", state, "h|" .. suffix, 1)
    redis.call("zadd", heads, fifo_since(b, level .. "|" .. after .. "|" .. tenant), suffix)
    redis.call("rpush", rr, tenant)
  else
    redis.call("hdel", state, "n|" .. suffix, "h|" .. suffix, "t|" .. suffix)
    redis.call("zrem", heads, suffix)
  end
  return id, tenant, at
end

-- A parked tenant back at the end of rr:level, if it still has messages at that level.
local function fifo_requeue_tenant(b, level, tenant)
  local state = KEYS[b + STATE]
  local heads = KEYS[b + HEADS]
  local rr = KEYS[b + RR + level]
  local suffix = level .. "|" .. tenant
  if tonumber(redis.call("hget", state, "n|" .. suffix) or "0") > 0 then
    local head = redis.call("hget", state, "h|" .. suffix)
    redis.call("zadd", heads, fifo_since(b, level .. "|" .. head .. "|" .. tenant), suffix)
    redis.call("rpush", rr, tenant)
  end
end

-- "id|level|tenant" -> id, level, tenant (the tenant may itself contain "|")
local function split_member(member)
  local first = string.find(member, "|", 1, true)
  local second = string.find(member, "|", first + 1, true)
  return string.sub(member, 1, first - 1), tonumber(string.sub(member, first + 1, second - 1)),
    string.sub(member, second + 1)
end

-- An in-flight record "fetch seq|level|tenant" -> level, tenant, fetch seq
local function split_meta(meta)
  local seq, level, tenant = split_member(meta)
  return level, tenant, tonumber(seq)
end

-- Leave up to `tokens` wake-up tokens for idle consumers (at most WAKE_TOKENS_MAX waiting).
local function wake_up(b, tokens)
  local wake = KEYS[b + WAKE]
  local room = WAKE_TOKENS_MAX - redis.call("llen", wake)
  for _ = 1, math.min(tokens, room) do
    redis.call("rpush", wake, "1")
  end
end
