-- breaker: one circuit breaker's state machine, shared by every thread of every worker
-- process: closed (calls pass; failures are counted) -> open (calls are refused until the
-- next probe time) -> half-open (exactly `probes` calls are admitted, fleet-wide) -> closed
-- when they all succeed, or open again when one fails.
--
-- KEYS:
--   state   KEYS[1]   {ns:breaker:NAME}, hash:
--             state ("closed" | "open" | "half_open"; absent: closed), gen (bumped by every
--             transition: a result of a call admitted under an older gen is ignored),
--             failures (consecutive), open_until (ms; 0 with forced=1: open until reset),
--             forced, probes (admitted this round), probe_ok, probe_deadline (ms; a probe that
--             has not reported by then is presumed lost and another is admitted),
--             w<slot> ("epoch:calls:failures", the sliding window of the rate mode),
--             opened_total, half_opened_total, closed_total, rejected_total, failures_total,
--             changed_at, last_error, and the spec (threshold, rate, window_ms, min_calls,
--             recovery_ms, probes_max) for operators.
-- ARGV: op, now_ms, mode ("consecutive" | "rate"), threshold, rate, window_ms, min_calls,
--   recovery_ms, probes_max, half_open_wait_ms, channel, name, then the op's own:
--   "acquire"  successes                         admit a call or refuse it
--   "record"   successes, gen, probe, failed, error name   the result of an admitted call
--   "release"  0, gen, probe                     an admitted probe that did not run
--   "reset"    0                                 closed, counts cleared
--   "open"     for_ms (0: until reset)           forced open (maintenance)
--   successes: calls that succeeded in this process and are not written yet (rate mode);
--   probe, failed: "1" or "0".
-- Writes: state. Publishes the breaker's name on `channel` at every transition (and at a
--   closed breaker's first failure; in the rate mode, at every failure), so that the processes
--   that cache a closed state drop it at once.
-- Returns: { allowed (0/1), probe (0/1), state, gen, wait_ms (when refused: until the next
--   probe, at most recovery_ms), failures (consecutive), transition ("" or the new state) }

local state = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
local mode, threshold, rate = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local window_ms, min_calls, recovery_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local probes_max, half_open_wait, channel, name = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], ARGV[12]
local SLOTS = 10

local function num(field)
  return tonumber(redis.call("hget", state, field) or "0") or 0
end

local current = redis.call("hget", state, "state") or "closed"
local gen = num("gen")
local transition = ""

local function clear_window()
  for slot = 0, SLOTS - 1 do
    redis.call("hdel", state, "w" .. slot)
  end
end

local COUNTERS = {open = "opened_total", half_open = "half_opened_total", closed = "closed_total"}

local function move(to, fields)
  gen = gen + 1
  current = to
  transition = to
  redis.call("hset", state, "state", to, "gen", gen, "changed_at", now, unpack(fields))
  redis.call("hincrby", state, COUNTERS[to], 1)
  redis.call("publish", channel, name)
end

local function open_for(ms, forced)
  local until_ms = 0
  if ms > 0 then
    until_ms = now + ms
  end
  move("open", {"open_until", until_ms, "forced", forced, "probes", 0, "probe_ok", 0})
end

local function close()
  move("closed", {"failures", 0, "probes", 0, "probe_ok", 0, "forced", 0, "open_until", 0})
  clear_window()
end

-- The sliding window: SLOTS buckets of window_ms / SLOTS each; adds, then returns the sums.
local function window_add(calls, failures)
  local width = math.max(1, math.ceil(window_ms / SLOTS))
  local epoch = math.floor(now / width)
  local field = "w" .. (epoch % SLOTS)
  local stored_epoch, stored_calls, stored_failures = 0, 0, 0
  local stored = redis.call("hget", state, field)
  if stored then
    local e, c, f = string.match(stored, "^(%d+):(%d+):(%d+)$")
    stored_epoch, stored_calls, stored_failures = tonumber(e), tonumber(c), tonumber(f)
  end
  if stored_epoch ~= epoch then
    stored_calls, stored_failures = 0, 0
  end
  if calls > 0 then
    redis.call("hset", state, field, epoch .. ":" .. (stored_calls + calls) .. ":" .. (stored_failures + failures))
  end
  local total_calls, total_failures = 0, 0
  for slot = 0, SLOTS - 1 do
    local value = redis.call("hget", state, "w" .. slot)
    if value then
      local e, c, f = string.match(value, "^(%d+):(%d+):(%d+)$")
      if tonumber(e) > epoch - SLOTS then
        total_calls, total_failures = total_calls + tonumber(c), total_failures + tonumber(f)
      end
    end
  end
  return total_calls, total_failures
end

local function reply(allowed, probe, wait)
  return {allowed, probe, current, gen, wait, num("failures"), transition}
end

-- How long a refused call waits: until the next probe, at most a recovery timeout (after a long
-- forced open that an operator ends early, the calls deferred meanwhile look again within one);
-- while probes run, at most half_open_wait.
local function refusal_wait()
  if current == "half_open" then
    return math.max(1, math.min(half_open_wait, num("probe_deadline") - now))
  end
  local until_ms = num("open_until")
  if until_ms == 0 then
    return recovery_ms  -- forced open until reset: look again after a recovery timeout
  end
  return math.max(1, math.min(until_ms - now, recovery_ms))
end

-- Operators: a transition only when the state changes (counted, published); else the fields.
if op == "reset" then
  if current ~= "closed" then
    close()
  else
    redis.call("hset", state, "failures", 0)
    clear_window()
  end
  return reply(1, 0, 0)
elseif op == "open" then
  local for_ms = tonumber(ARGV[13])
  if current ~= "open" then
    open_for(for_ms, 1)
  else
    local until_ms = 0
    if for_ms > 0 then
      until_ms = now + for_ms
    end
    redis.call("hset", state, "open_until", until_ms, "forced", 1)
  end
  return reply(0, 0, 0)
end
redis.call("hset", state, "threshold", threshold, "rate", rate, "window_ms", window_ms, "min_calls", min_calls,
  "recovery_ms", recovery_ms, "probes_max", probes_max, "mode", mode)
local pending = tonumber(ARGV[13])

-- Time moves an open breaker to half-open, and ends a half-open round whose probes were lost.
if current == "open" then
  local until_ms = num("open_until")
  if until_ms > 0 and now >= until_ms then
    move("half_open", {"probes", 0, "probe_ok", 0, "probe_deadline", now + recovery_ms, "forced", 0})
  end
elseif current == "half_open" and now >= num("probe_deadline") then
  -- A new round: a late result (or release) of the lost round's probes must not count in it.
  gen = gen + 1
  redis.call("hset", state, "gen", gen, "probes", 0, "probe_ok", 0, "probe_deadline", now + recovery_ms)
end

if op == "acquire" then
  if current == "closed" then
    if pending > 0 and mode == "rate" then
      window_add(pending, 0)
    end
    return reply(1, 0, 0)
  elseif current == "half_open" then
    local admitted = num("probes")
    if admitted < probes_max then
      redis.call("hset", state, "probes", admitted + 1)
      return reply(1, 1, 0)
    end
  end
  redis.call("hincrby", state, "rejected_total", 1)
  return reply(0, 0, refusal_wait())
elseif op == "release" then
  if tonumber(ARGV[14]) == gen and current == "half_open" and ARGV[15] == "1" then
    redis.call("hset", state, "probes", math.max(0, num("probes") - 1))
  end
  return reply(1, 0, 0)
end

-- op == "record": the result of one call admitted under generation ARGV[14].
local call_gen, probe, failed = tonumber(ARGV[14]), ARGV[15] == "1", ARGV[16] == "1"
if failed then
  redis.call("hincrby", state, "failures_total", 1)
  redis.call("hset", state, "last_error", ARGV[17], "last_failure_at", now)
end
if call_gen ~= gen then
  -- Admitted before the last transition: its result says nothing of now. A failure that finds
  -- the breaker open (or probing) is told how long to wait, as a refused call would be.
  if current ~= "closed" then
    return reply(0, 0, refusal_wait())
  end
  return reply(1, 0, 0)
end
if current == "closed" then
  if failed then
    local failures = redis.call("hincrby", state, "failures", 1)
    if failures == 1 or mode == "rate" then
      -- Processes that cache this breaker closed drop it, so their next success is written
      -- (resetting the count) and their unwritten successes join the window.
      redis.call("publish", channel, name)
    end
    local calls, failed_calls = window_add(pending + 1, 1)
    local trips
    if mode == "rate" then
      trips = calls >= min_calls and failed_calls >= rate * calls
    else
      trips = failures >= threshold
    end
    if trips then
      open_for(recovery_ms, 0)
      return reply(0, 0, recovery_ms)
    end
  else
    redis.call("hset", state, "failures", 0)
    if mode == "rate" then
      window_add(pending + 1, 0)
    end
  end
elseif current == "half_open" and probe then
  if failed then
    open_for(recovery_ms, 0)
    return reply(0, 0, recovery_ms)
  end
  local ok = redis.call("hincrby", state, "probe_ok", 1)
  if ok >= probes_max then
    close()
  end
end
return reply(1, 0, 0)
