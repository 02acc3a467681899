-- ready.lua: a copy's load is done (agent.lifecycle.Copies.loaded): loading -> ready.
--
-- Mark the copy ready with the bytes the worker measured and keep the worker's observations,
-- unless the model grew past its reservation ('grow': the caller takes the transaction that
-- may evict to make room, or gives the reservation back).
--
-- KEYS[1] entries:{d}   KEYS[2] stats:{model}
-- ARGV[1] slot   ARGV[2] measured bytes ('' keeps the reservation)   ARGV[3] now
-- then field/value pairs for the model's stats
-- Returns 'ready', 'grow', or 'gone' (evicted or forgotten meanwhile; stats still stored).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local doc = cjson.decode(raw)
  if ARGV[2] ~= '' then
    if tonumber(ARGV[2]) > tonumber(doc['bytes']) then return 'grow' end
    doc['bytes'] = tonumber(ARGV[2])
  end
  doc['state'] = 'ready'
  doc['since'] = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if raw then return 'ready' end
return 'gone'
