-- settle: finish an in-flight message: ack (forget it) or nack (move it to dead letters).
--
-- KEYS: 1 {ns:Q}:msgs, 2 {ns:Q}:stats, 3 {ns:Q}:acks:<consumer id>,
--       4 {ns:Q}:dead (zset id -> time), 5 {ns:Q}:dead.msgs (hash id -> message)
-- ARGV: "ack" or "nack", now_ms, id
-- Writes: msgs, stats (running, acked_total, dead_total), acks, dead, dead.msgs
-- Returns: 1, or 0 when the message was not in flight for this consumer (already settled).

local id = ARGV[3]
if redis.call("hdel", KEYS[3], id) == 0 then
  return 0
end
redis.call("hincrby", KEYS[2], "running", -1)
if ARGV[1] == "nack" then
  local payload = redis.call("hget", KEYS[1], id)
  if payload then
    redis.call("hset", KEYS[5], id, payload)
    redis.call("zadd", KEYS[4], tonumber(ARGV[2]), id)
  end
  redis.call("hincrby", KEYS[2], "dead_total", 1)
else
  redis.call("hincrby", KEYS[2], "acked_total", 1)
end
redis.call("hdel", KEYS[1], id)
return 1
