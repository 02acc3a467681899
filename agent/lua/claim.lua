-- claim.lua: a worker starts an invocation on its copy of a model (agent.lifecycle.claim).
--
-- The copy must still be accounted (loading or ready): then it is pinned — it cannot be
-- evicted while it executes — and its entry returned. If it is gone (evicted or forgotten
-- while the request waited in the worker's queue), nothing changes and nil is returned: the
-- worker places the request again, as a miss. A function whose model failed is refused.
--
-- Either way the request is no longer queued on the copy: its queued count goes down.
--
-- KEYS[1] entries:{d}   KEYS[2] pins:{d}   KEYS[3] failed   KEYS[4] queued:{d}
-- ARGV[1] slot (model|worker)   ARGV[2] function ('' skips the failed check)
-- Returns {'failed', reason}, the entry JSON, or nil.
local queued = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if queued > 1 then
  redis.call('HINCRBY', KEYS[4], ARGV[1], -1)
elseif queued == 1 then
  redis.call('HDEL', KEYS[4], ARGV[1])
end
if ARGV[2] ~= '' then
  local reason = redis.call('HGET', KEYS[3], ARGV[2])
  if reason then return {'failed', reason} end
end
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return nil end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return entry
