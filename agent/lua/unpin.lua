-- unpin.lua: an invocation on a copy is over (agent.lifecycle.unpin).
--
-- Decrement the copy's pin (never below zero: a copy forgotten meanwhile has no pin left to
-- give back, and a late unpin must not create one) and store the model's exec time.
--
-- KEYS[1] pins:{d}   KEYS[2] stats:{model}   KEYS[3] waiting:{d}
-- ARGV[1] slot   ARGV[2] exec seconds ('' keeps the stored value)
-- Returns the number of requests waiting for memory on the device (> 0: try to admit them).
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n > 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
elseif n == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'exec_s', ARGV[2]) end
return redis.call('ZCARD', KEYS[3])
