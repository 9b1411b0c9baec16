-- settle: finish an in-flight message: ack (forget it) or nack (move it to the dead letters
-- with why it failed).
--
-- KEYS: 1 {ns:Q}:msgs, 2 {ns:Q}:stats, 3 {ns:Q}:acks:<consumer id>, 4 {ns:Q}:deliveries,
--       5 {ns:Q}:dead (zset id -> time dead-lettered), 6 {ns:Q}:dead.msgs (hash id -> message),
--       7 {ns:Q}:dead.info (hash id -> JSON: reason, error, deliveries, ...)
-- ARGV: "ack" or "nack", now_ms, id, for nack: the JSON description of the failure
-- Writes: msgs, stats (running, acked_total, dead_total), acks, deliveries, dead, dead.msgs,
--   dead.info
-- Returns: 1, or 0 when the message was not in flight for this consumer (already settled,
--   or reclaimed after this worker was presumed dead).

local id = ARGV[3]
if redis.call("hdel", KEYS[3], id) == 0 then
  return 0
end
redis.call("hincrby", KEYS[2], "running", -1)
if ARGV[1] == "nack" then
  dead_letter(KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[2], id, tonumber(ARGV[2]), cjson.decode(ARGV[4]))
else
  redis.call("hincrby", KEYS[2], "acked_total", 1)
  redis.call("hdel", KEYS[1], id)
  redis.call("hdel", KEYS[4], id, id .. ":max")
end
return 1
