-- unpin.lua: an invocation on a copy is over (agent.lifecycle.unpin).
--
-- Decrement the copy's pin (never below zero: a copy forgotten meanwhile has no pin left to
-- give back, and a late unpin must not create one) and store the model's exec time. A copy
-- that is draining (a miss waits for its memory; it takes no new requests) and has nothing
-- left queued or executing is evicted here: draining -> releasing; its worker drops it.
--
-- KEYS[1] pins:{d}   KEYS[2] stats:{model}   KEYS[3] waiting:{d}   KEYS[4] entries:{d}
-- KEYS[5] queued:{d}   KEYS[6] used:{d}   KEYS[7] priority:{d}   KEYS[8] releasing:{d}
-- KEYS[9] evictions:{d}
-- ARGV[1] slot   ARGV[2] exec seconds ('' keeps the stored value)   ARGV[3] policy name
-- Returns {requests waiting for memory on the device, 1 if the copy was evicted here else 0}.
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n > 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
elseif n == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'exec_s', ARGV[2]) end
local evicted = 0
local raw = redis.call('HGET', KEYS[4], ARGV[1])
if raw and n <= 1 and cjson.decode(raw)['state'] == 'draining'
    and tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0') == 0 then
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[6], ARGV[1])
  redis.call('HDEL', KEYS[7], ARGV[1])
  redis.call('HSET', KEYS[8], ARGV[1], 1)
  redis.call('HINCRBY', KEYS[9], ARGV[3], 1)
  evicted = 1
end
return {redis.call('ZCARD', KEYS[3]), evicted}
