-- hit.lua: a warm hit as one atomic step (agent.placement.Placement.try_hit).
--
-- Find the alive worker holding MODEL with the shortest backlog (RQ queue + lane), account the
-- request and the hit, append the arrival and push the invocation onto that worker's lane.
-- The copy is not pinned here: the worker pins it when it starts the work (claim.lua); if the
-- copy was evicted meanwhile the worker places the request again as a miss. The copy's
-- queued count goes up (placement evicts copies nobody waits for first).
-- A draining copy (a miss waits for its memory) takes no new requests: not a holder here.
-- Anything but a plain hit (no holder, every holder backed up: a second copy may be due)
-- returns nil and the caller takes the WATCH/MULTI path.
--
-- KEYS[1] functions:version   KEYS[2] failed        KEYS[3] members:version
-- KEYS[4] arrivals            KEYS[5] requests      KEYS[6] stats:{model}
-- then per device d (ARGV[9] of them, 6 keys each):
--   entries:{d}  used:{d}  hits:{d}  priority:{d}  clock:{d}  queued:{d}
-- then per worker w (ARGV[10] of them, 4 keys each):
--   alive:{w}  lane:{w}  rq:queue:{queue of w}  lane:{w}:loads
-- ARGV[1] function ('' skips the registry checks)  ARGV[2] the caller's registry version
-- ARGV[3] the caller's membership version           ARGV[4] model     ARGV[5] now
-- ARGV[6] the lane message                          ARGV[7] backlog at which a holder is
--         "backed up"                               ARGV[8] arrivals kept (stream MAXLEN)
-- ARGV[9] number of devices   ARGV[10] number of workers
-- then per worker: its name, the 1-based index of its device
-- Returns {'stale'} (registry changed), {'members'} (membership changed), {'failed', reason},
-- nil, or {worker, device index, requests of the model, stored priority, clock, entry JSON}.
local fn, version, members = ARGV[1], ARGV[2], ARGV[3]
if fn ~= '' then
  if (redis.call('GET', KEYS[1]) or '') ~= version then return {'stale'} end
  local reason = redis.call('HGET', KEYS[2], fn)
  if reason then return {'failed', reason} end
end
if (redis.call('GET', KEYS[3]) or '0') ~= members then return {'members'} end
local model, now, msg = ARGV[4], ARGV[5], ARGV[6]
local max_queue, ndev, nw = tonumber(ARGV[7]), tonumber(ARGV[9]), tonumber(ARGV[10])
local wk = 6 + 6 * ndev
local best, best_name, best_len, best_dev, best_entry
for j = 1, nw do
  local w, d = ARGV[10 + 2 * j - 1], tonumber(ARGV[10 + 2 * j])
  local base = wk + 4 * (j - 1)
  if redis.call('EXISTS', KEYS[base + 1]) == 1 then
    local entry = redis.call('HGET', KEYS[6 + 6 * (d - 1) + 1], model .. '|' .. w)
    if entry and cjson.decode(entry)['state'] == 'draining' then entry = nil end
    if entry then
      local len = redis.call('LLEN', KEYS[base + 3]) + redis.call('LLEN', KEYS[base + 2])
        + redis.call('LLEN', KEYS[base + 4])
      if best == nil or len < best_len or (len == best_len and w < best_name) then
        best, best_name, best_len, best_dev, best_entry = j, w, len, d, entry
      end
    end
  end
end
if best == nil or best_len >= max_queue then return nil end
local w = ARGV[10 + 2 * best - 1]
local s = model .. '|' .. w
local dk = 6 + 6 * (best_dev - 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'm', model, 't', now)
redis.call('HSET', KEYS[dk + 2], s, now)
local requests = redis.call('HINCRBY', KEYS[6], 'requests', 1)
redis.call('INCR', KEYS[5])
redis.call('HINCRBY', KEYS[dk + 3], model, 1)
redis.call('HINCRBY', KEYS[dk + 6], s, 1)
redis.call('RPUSH', KEYS[wk + 4 * (best - 1) + 2], msg)
local priority = redis.call('HGET', KEYS[dk + 4], s) or '0'
local clock = redis.call('GET', KEYS[dk + 5]) or '0'
return {w, best_dev, requests, priority, clock, best_entry}
