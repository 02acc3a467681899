-- orphan.lua: a dead worker's queued synchronous calls go to its device's orphans list, to be
-- placed again on another worker (agent.waiting.adopt_orphans), instead of failing.
--
-- Their callers are still waiting: each call's route key says "orphaned", so its gateway keeps
-- waiting rather than answering "worker died" (the call never started). The caller reads the
-- lane first and passes the calls' route keys; if the lane changed meanwhile, nothing is moved.
--
-- KEYS[1] lane:{w}   KEYS[2] orphans:{d}   KEYS[3..] route:{reply} of each call, in order
-- ARGV[1] seconds a route key lives
-- Returns the number of calls moved, or -1 if the lane is not what the caller read.
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items ~= #KEYS - 2 then return -1 end
for i, item in ipairs(items) do
  redis.call('RPUSH', KEYS[2], item)
  redis.call('SET', KEYS[2 + i], 'orphaned', 'EX', ARGV[1])
end
redis.call('DEL', KEYS[1])
return #items
