-- actor_limits: one actor's fleet-wide rate limit (a token bucket) and concurrency limit (leases),
-- shared by every thread of every worker process.
--
-- KEYS:
--   bucket  KEYS[1]  {ns:actor:NAME}:bucket, hash: tokens, updated_at (ms)
--   leases  KEYS[2]  {ns:actor:NAME}:leases, zset lease id -> expiry (ms); expired ones are lost
--                    runs (their worker died) and free their place
-- ARGV: "take", now_ms, rate per ms (0: no rate limit), burst, concurrency (0: none), lease id,
--   lease ms; or "release", lease id
-- Writes: bucket, leases
-- Returns: take: 0 when admitted (a token taken, a lease held), else the ms to wait before
--   asking again (the next token, or the earliest lease's expiry, at most a second).
--   release: 1.

local bucket = KEYS[1]
local leases = KEYS[2]

if ARGV[1] == "release" then
  redis.call("zrem", leases, ARGV[2])
  return 1
end

local now, rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local concurrency, lease, lease_ms = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])

if concurrency > 0 then
  redis.call("zremrangebyscore", leases, "-inf", now)
  if redis.call("zcard", leases) >= concurrency then
    local first = redis.call("zrange", leases, 0, 0, "WITHSCORES")
    return math.max(1, math.min(1000, tonumber(first[2]) - now))
  end
end
if rate > 0 then
  local tokens = tonumber(redis.call("hget", bucket, "tokens") or burst)
  local last = tonumber(redis.call("hget", bucket, "updated_at") or now)
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  now = math.max(now, last) -- a worker whose clock is behind must not refill the bucket twice
  if tokens < 1 then
    redis.call("hset", bucket, "tokens", tokens, "updated_at", now)
    return math.max(1, math.ceil((1 - tokens) / rate))
  end
  redis.call("hset", bucket, "tokens", tokens - 1, "updated_at", now)
end
if concurrency > 0 then
  redis.call("zadd", leases, now + lease_ms, lease)
  redis.call("pexpire", leases, lease_ms * 2)
end
return 0
