-- lease.lua: the due entries of a schedule (a sorted set of id -> due time), leased to the
-- caller: their due time moves ARGV[2] seconds ahead, so no other caller takes them meanwhile;
-- the caller reschedules or removes each when it is done (a caller that dies loses the lease).
--
-- KEYS[1] the schedule   ARGV[1] now   ARGV[2] lease seconds   ARGV[3] how many at most
-- Returns the ids leased.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return due
