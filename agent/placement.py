"""Placement: which worker serves a request, and what is evicted to make room.

The cache state of every device lives in Redis, so any number of gateway processes (and
devices) share it. A placement is one optimistic transaction (``WATCH`` / ``MULTI``): read the
device's entries and pins, let the eviction policy choose victims, then commit the new entry,
the evictions and the RQ job together. If another placement or a worker changed the state in
between, Redis refuses the commit and the decision is taken again on fresh state, so
concurrent misses never commit more than a device's cap.

Keys (``brulee:`` prefix):

- ``device:{d}`` hash: ``cap`` (bytes), ``policy``
- ``workers`` set; ``worker:{w}`` hash: ``device``, ``queue``, ``pid``, ``host``;
  ``alive:{w}``: heartbeat with a short TTL, refreshed by the worker's own thread
- ``entries:{d}`` hash ``model|worker`` → JSON ``{bytes, state, inserted_at, priority}``;
  ``state`` is ``loading`` until the worker has the interpreter ready
- ``pins:{d}`` hash ``model|worker`` → jobs placed and not finished (pinned: never a victim)
- ``used:{d}``, ``priority:{d}`` hashes ``model|worker`` → last use, the policy's priority
  (GDSF); kept apart from ``entries`` so that hits never touch a watched key
- ``hits:{d}``, ``misses:{d}``, ``evictions:{d}``, ``prewarms:{d}`` hashes: counters by model
  (by policy for evictions)
- ``arrivals`` stream: ``{m: model, t: time}`` per placement request (the last
  ``ARRIVALS_KEPT``), read by the agent's proactive (keep-alive/prewarm) loop
- ``releasing:{d}`` hash ``model|worker`` → bytes: evicted, not yet dropped by its worker;
  a load that evicted them waits until they are gone, so resident memory follows the cap
- ``stats:{model}`` hash: ``requests``, ``load_s``, ``exec_s``, ``bytes`` (the reservation a
  worker corrected, for models without a profile), ``observed_bytes`` (RSS increase at load);
  ``requests`` counter: all requests (the policies' ``R``); ``clock:{d}``: GDSF's clock
- ``failed`` hash function → reason
- ``lane:{w}`` list: synchronous invocations placed on worker ``w`` (a JSON header line, then
  the input tensor as ``.npy``); the worker pops it next to its RQ queue (RQ's queue first,
  so evictions and async jobs are not starved) and pushes the answer to ``reply:{id}``
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from agent.memory import rss_bytes
from agent.policies import Entry, EvictionPolicy, make_policy

PREFIX = "brulee"
HEARTBEAT_TTL = 5.0  # seconds without a heartbeat before a worker counts as dead
SCALE_OUT_QUEUE = 2  # a hit on a worker with this many jobs queued may use a second copy
ARRIVALS_KEPT = 10_000  # the arrivals stream proactive policies read (``arrivals``)
REPLY_TTL_S = 120  # an answer nobody collected (its caller gave up) expires

# A warm hit as one atomic step: find the alive worker holding ``model`` with the shortest
# backlog (RQ queue + lane), pin it, account the request and push the invocation onto its lane.
# Same decision as ``Cache._decide`` for hits; anything else (no holder, a dead holder, every
# holder backed up: a second copy may be due) returns nil and takes the WATCH/MULTI path.
# Returns {worker, device, requests of the model, stored priority, clock, entry JSON}. Given a
# function and the registry version its caller decoded the request with, it first checks both
# in the same step: {'stale'} if the registry changed, {'failed', reason} if the function's
# model failed to load.
_HIT_SCRIPT = """
local p, model, now, msg, max_queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local fn, version = ARGV[7], ARGV[8]
if fn ~= '' then  -- the caller's copy of the function registry must be current
  if (redis.call('GET', p .. ':functions:version') or '') ~= version then return {'stale'} end
  local reason = redis.call('HGET', p .. ':failed', fn)
  if reason then return {'failed', reason} end
end
local best, best_len, best_dev, best_entry
for _, w in ipairs(redis.call('SMEMBERS', p .. ':workers')) do
  if redis.call('EXISTS', p .. ':alive:' .. w) == 1 then
    local info = redis.call('HMGET', p .. ':worker:' .. w, 'device', 'queue')
    if info[1] then
      local entry = redis.call('HGET', p .. ':entries:' .. info[1], model .. '|' .. w)
      if entry then
        local len = redis.call('LLEN', 'rq:queue:' .. info[2])
        len = len + redis.call('LLEN', p .. ':lane:' .. w)
        if best == nil or len < best_len or (len == best_len and w < best) then
          best, best_len, best_dev, best_entry = w, len, info[1], entry
        end
      end
    end
  end
end
if best == nil or best_len >= max_queue then return nil end
local s = model .. '|' .. best
redis.call('XADD', p .. ':arrivals', 'MAXLEN', '~', ARGV[6], '*', 'm', model, 't', now)
redis.call('HINCRBY', p .. ':pins:' .. best_dev, s, 1)
redis.call('HSET', p .. ':used:' .. best_dev, s, now)
local requests = redis.call('HINCRBY', p .. ':stats:' .. model, 'requests', 1)
redis.call('INCR', p .. ':requests')
redis.call('HINCRBY', p .. ':hits:' .. best_dev, model, 1)
redis.call('RPUSH', p .. ':lane:' .. best, msg)
local priority = redis.call('HGET', p .. ':priority:' .. best_dev, s) or '0'
local clock = redis.call('GET', p .. ':clock:' .. best_dev) or '0'
return {best, best_dev, requests, priority, clock, best_entry}
"""


# A load is done: mark the copy ready (with the bytes the worker measured) and keep the worker's
# observations, in one step, unless the model grew past its reservation ('grow': the caller
# takes the transaction that may evict to make room). KEYS: entries of the device, the model's
# stats; ARGV: slot, measured bytes or '', then field/value pairs for the stats.
_READY_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local doc = cjson.decode(raw)
  if ARGV[2] ~= '' then
    if tonumber(ARGV[2]) > tonumber(doc['bytes']) then return 'grow' end
    doc['bytes'] = tonumber(ARGV[2])
  end
  doc['state'] = 'ready'
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if raw then return 'ready' end
return 'gone'
"""


def key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


def slot(model: str, worker: str) -> str:
    return f"{model}|{worker}"


def unslot(field_: str | bytes) -> tuple[str, str]:
    text = field_.decode() if isinstance(field_, bytes) else field_
    model, worker = text.rsplit("|", 1)
    return model, worker


def lane(worker: str) -> str:
    """The list a worker pops synchronous invocations from."""
    return key("lane", worker)


def _loading_entry(model: ModelFacts, now: float) -> str:
    """The ``entries`` value of a copy being loaded (a miss or a prewarm)."""
    return json.dumps(
        {"bytes": model.bytes, "state": "loading", "inserted_at": now,
         "load_s": model.load_s, "exec_s": model.exec_s}
    )  # fmt: skip


def _used(entries: list[tuple[str, str, dict]]) -> int:
    """Bytes held by a device's ``entries`` (as ``Cache._entries`` lists them)."""
    return sum(int(doc["bytes"]) for _, _, doc in entries)


def _parse_cap(device: str, raw: bytes | None) -> int:
    """A device's cap as stored in ``device:{d}``."""
    if raw is None:
        raise PlacementError(f"device {device!r} has no memory cap configured")
    return int(raw)


def _parse_entries(raw: dict, workers) -> list[tuple[str, str, dict]]:
    """A device's ``entries`` hash as ``(model, worker, doc)``, for the given workers only."""
    out = []
    for field_, value in _decode(raw).items():
        model, worker = unslot(field_)
        if worker in workers:
            out.append((model, worker, json.loads(value)))
    return out


def _ask_backlogs(pipe, workers) -> None:
    """Queue in ``pipe`` what :func:`_backlogs_from` needs: each worker's RQ queue and lane."""
    for w in workers:
        pipe.llen(f"rq:queue:{w.queue}")
        pipe.llen(lane(w.name))


def _backlogs_from(workers, lengths: list[int]) -> dict[str, int]:
    """Invocations waiting per worker, from the replies :func:`_ask_backlogs` asked for."""
    return {w.name: lengths[2 * i] + lengths[2 * i + 1] for i, w in enumerate(workers)}


class PlacementError(Exception):
    """A request that cannot be placed; ``status`` is the HTTP answer."""

    status = 503


class NoWorkers(PlacementError):
    status = 503


class ModelTooLarge(PlacementError):
    status = 507


class FunctionFailed(PlacementError):
    """The function's model failed to load (the reason is in the ``failed`` hash)."""

    status = 503


class RegistryChanged(Exception):
    """The function registry changed since the caller read it: read it again and retry."""


class MemoryBusy(PlacementError):
    """Enough memory exists, but the models holding it are executing right now."""

    status = 503


@dataclass(frozen=True)
class ModelFacts:
    """What placement needs to know about the model a request wants."""

    name: str
    bytes: int
    load_s: float
    exec_s: float


@dataclass
class Placement:
    device: str
    worker: str
    queue: str
    hit: bool
    evict_here: list[str] = field(default_factory=list)  # models the target drops first
    wait_for: list[str] = field(default_factory=list)  # releasing slots on other workers
    evicted: list[tuple[str, str]] = field(default_factory=list)  # (model, worker)


@dataclass
class _State:
    """The cache state one placement decides on (read by ``Cache._read_state``)."""

    requests: int  # all requests so far (the policies' R)
    model_requests: int  # requests for the model being placed
    entries: dict[str, list[tuple[str, str, dict]]] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)
    pins: dict[str, dict[str, str]] = field(default_factory=dict)
    clocks: dict[str, float] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)


@dataclass
class _Worker:
    name: str
    device: str
    queue: str


def _decode(mapping: dict) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }


class Cache:
    """The shared, Redis-backed view of every device's model cache."""

    def __init__(self, conn: redis.Redis, policy: str = "cremebrulee", **policy_options: Any):
        self.r = conn
        self.policy_name = policy
        self.policy: EvictionPolicy = make_policy(policy, **policy_options)
        self._hit_script = conn.register_script(_HIT_SCRIPT)
        self._ready_script = conn.register_script(_READY_SCRIPT)
        # only policies that override on_hit need the stored facts recomputed on a hit (GDSF)
        self._recompute_on_hit = type(self.policy).on_hit is not EvictionPolicy.on_hit

    # -- devices and workers -------------------------------------------------------------

    def set_device(self, device: str, cap: int | None = None, policy: str | None = None) -> None:
        values = {k: v for k, v in (("cap", cap), ("policy", policy)) if v is not None}
        if values:
            self.r.hset(key("device", device), mapping=values)

    def register_worker(
        self,
        worker: str,
        device: str,
        queue: str,
        pid: int,
        host: str,
        rss: int = 0,
        spool: str = "",
    ) -> None:
        """``rss``: the worker's resident memory before it holds any model (its baseline);
        ``spool``: its marker in the input spool ('' if it has none, see ``agent.lane``)."""
        pipe = self.r.pipeline()
        pipe.hset(
            key("worker", worker),
            mapping={"device": device, "queue": queue, "pid": pid, "host": host,
                     "baseline_rss": rss, "rss": rss, "spool": spool},
        )  # fmt: skip
        pipe.sadd(key("workers"), worker)
        pipe.set(key("alive", worker), 1, px=int(HEARTBEAT_TTL * 1000))
        pipe.execute()

    def heartbeat(self, worker: str, rss: int | None = None) -> None:
        """The worker is alive; ``rss``: its resident memory now (shown in ``/system/cache``)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(key("alive", worker), 1, px=int(HEARTBEAT_TTL * 1000))
        if rss is not None:
            pipe.hset(key("worker", worker), "rss", rss)
        pipe.execute()

    def workers(self) -> tuple[dict[str, _Worker], list[str]]:
        """Alive workers by name, and the names of registered workers that are dead."""
        names = sorted(n.decode() for n in self.r.smembers(key("workers")))
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.exists(key("alive", name))
            pipe.hgetall(key("worker", name))
        replies = pipe.execute()
        alive, dead = {}, []
        for i, name in enumerate(names):
            info = _decode(replies[2 * i + 1])
            if replies[2 * i] and info:
                alive[name] = _Worker(name, info["device"], info["queue"])
            else:
                dead.append(name)
        return alive, dead

    def spool_markers(self) -> list[str]:
        """Each registered worker's marker in the input spool ('' for none)."""
        names = self.r.smembers(key("workers"))
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(key("worker", name.decode()), "spool")
        return [(m or b"").decode() for m in pipe.execute()]

    def forget_worker(self, worker: str) -> list[str]:
        """Drop a dead worker and release its models from the accounting; returns them."""
        info = _decode(self.r.hgetall(key("worker", worker)))
        device = info.get("device")
        released: list[str] = []
        if device:
            with self.r.pipeline() as pipe:
                for name in ("entries", "pins", "used", "priority", "releasing"):
                    fields = [f for f in self.r.hkeys(key(name, device)) if unslot(f)[1] == worker]
                    if name == "entries":
                        released = [unslot(f)[0] for f in fields]
                    if fields:
                        pipe.hdel(key(name, device), *fields)
                pipe.execute()
        self.r.srem(key("workers"), worker)
        self.r.delete(key("worker", worker), key("alive", worker), lane(worker))
        return released

    # -- the decision --------------------------------------------------------------------

    def _cap(self, device: str) -> int:
        return _parse_cap(device, self.r.hget(key("device", device), "cap"))

    def _entries(self, device: str, workers: dict[str, _Worker]) -> list[tuple[str, str, dict]]:
        return _parse_entries(self.r.hgetall(key("entries", device)), workers)

    def _policy_entries(
        self, device: str, entries: list[tuple[str, str, dict]], pins: dict[str, str]
    ) -> list[tuple[Entry, str]]:
        """Policy facts for every cached copy on ``device``, with its slot."""
        if not entries:
            return []
        models = sorted({m for m, _, _ in entries})
        pipe = self.r.pipeline(transaction=False)
        for m in models:
            pipe.hgetall(key("stats", m))
        pipe.hgetall(key("used", device))
        pipe.hgetall(key("priority", device))
        *replies, used, priority = (_decode(reply) for reply in pipe.execute())
        stats = dict(zip(models, replies))
        result = []
        for model, worker, doc in entries:
            s = slot(model, worker)
            st = stats.get(model, {})
            result.append(
                (
                    Entry(
                        name=model,
                        bytes=int(doc["bytes"]),
                        load_s=float(st.get("load_s", doc.get("load_s", 0.0))),
                        exec_s=float(st.get("exec_s", doc.get("exec_s", 0.0))),
                        requests=int(st.get("requests", 0)),
                        last_used=float(used.get(s, doc["inserted_at"])),
                        inserted_at=float(doc["inserted_at"]),
                        pinned=int(pins.get(s, 0)) > 0 or doc["state"] == "loading",
                        priority=float(priority.get(s, 0.0)),
                    ),
                    s,
                )
            )
        return result

    def _backlogs(self, workers) -> dict[str, int]:
        """Invocations waiting for each worker (its RQ queue plus its lane), in one round
        trip."""
        workers = list(workers)
        pipe = self.r.pipeline(transaction=False)
        _ask_backlogs(pipe, workers)
        return _backlogs_from(workers, pipe.execute())

    def try_hit(
        self,
        model: str,
        message: bytes,
        now: float | None = None,
        function: str = "",
        registry_version: bytes | None = None,
    ) -> Placement | None:
        """The warm-hit fast path: one Redis script places ``message`` (a lane invocation) on
        the least-backed-up worker holding ``model``, pinned and accounted like a hit of
        :meth:`place`. None when it is not a plain hit; then call :meth:`place`.

        With ``function``, the same step first checks that ``registry_version`` (of the
        function registry the caller decoded with) is current — else :class:`RegistryChanged`
        — and that the function has not failed — else :class:`FunctionFailed`.

        Policies that update their state on a hit (GDSF) have it recomputed here from what
        the script returned and written back (one more round trip, only for them)."""
        now = now or time.time()
        found = self._hit_script(
            args=[PREFIX, model, repr(now), message, SCALE_OUT_QUEUE, ARRIVALS_KEPT,
                  function, registry_version or b""]
        )  # fmt: skip
        if found is None:
            return None
        found = [v.decode() if isinstance(v, bytes) else v for v in found]
        if found[0] == "stale":
            raise RegistryChanged()
        if found[0] == "failed":
            raise FunctionFailed(f"function {function!r} failed: {found[1]}")
        worker, device, requests, priority, clock, raw = found
        if self._recompute_on_hit:
            doc = json.loads(raw)
            stats = _decode(self.r.hgetall(key("stats", model)))
            entry = Entry(
                model,
                int(doc["bytes"]),
                float(stats.get("load_s", doc.get("load_s", 0.0))),
                float(stats.get("exec_s", doc.get("exec_s", 0.0))),
                requests=int(requests),
                last_used=now,
                inserted_at=float(doc["inserted_at"]),
                priority=float(priority),
            )
            self._set_clock(float(clock))
            self.policy.on_hit(entry, now)
            self.r.hset(key("priority", device), slot(model, worker), entry.priority)
        return Placement(device, worker, "", hit=True)

    def place(
        self,
        model: ModelFacts,
        enqueue: Callable[[redis.client.Pipeline, Placement], Any],
        now: float | None = None,
    ) -> tuple[Placement, Any]:
        """Decide where ``model`` runs and commit it, with ``enqueue(pipe, placement)`` adding
        the RQ job(s) to the same transaction. Returns the placement and what enqueue returned.

        Raises NoWorkers, ModelTooLarge (the model exceeds every device's cap) or MemoryBusy
        (the memory is held by executing models; retry later). Either way the arrival is
        recorded for the proactive policies (in the commit's transaction when it succeeds)."""
        now = now or time.time()
        try:
            return self._place(model, enqueue, now)
        except PlacementError:
            self._record_arrival(self.r, model.name, now)
            raise

    @staticmethod
    def _record_arrival(conn, model: str, now: float) -> None:
        conn.xadd(
            key("arrivals"), {"m": model, "t": repr(now)}, maxlen=ARRIVALS_KEPT, approximate=True
        )

    def _place(
        self,
        model: ModelFacts,
        enqueue: Callable[[redis.client.Pipeline, Placement], Any],
        now: float,
    ) -> tuple[Placement, Any]:
        while True:
            alive, dead = self.workers()
            for name in dead:
                self.forget_worker(name)
            if not alive:
                raise NoWorkers(
                    "no worker is running: start one with `brulee up` or `brulee worker`"
                )
            devices = sorted({w.device for w in alive.values()})
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(
                        *(key(n, d) for d in devices for n in ("entries", "pins")), key("workers")
                    )
                    state = self._read_state(model.name, alive, devices)
                    placement = self._decide(model, alive, devices, now, state)
                    pipe.multi()
                    self._record_arrival(pipe, model.name, now)
                    self._commit(pipe, model, placement, now, state)
                    result = enqueue(pipe, placement)
                    pipe.execute()
                    return placement, result
                except redis.WatchError:
                    continue  # someone changed the cache meanwhile: decide again

    def _read_state(self, model: str, alive: dict[str, _Worker], devices: list[str]) -> _State:
        """What a decision reads, in one round trip (inside the WATCH)."""
        pipe = self.r.pipeline(transaction=False)
        for d in devices:
            pipe.hgetall(key("entries", d))
            pipe.hget(key("device", d), "cap")
            pipe.hgetall(key("pins", d))
            pipe.get(key("clock", d))
        _ask_backlogs(pipe, alive.values())
        pipe.get(key("requests"))
        pipe.hget(key("stats", model), "requests")
        replies = pipe.execute()
        state = _State(int(replies[-2] or 0), int(replies[-1] or 0))
        for i, d in enumerate(devices):
            raw, cap, pins, clock = replies[4 * i : 4 * i + 4]
            state.entries[d] = _parse_entries(raw, alive)
            state.caps[d], state.pins[d] = _parse_cap(d, cap), _decode(pins)
            state.clocks[d] = float(clock or 0.0)
        state.backlog = _backlogs_from(alive.values(), replies[4 * len(devices) : -2])
        return state

    def _decide(
        self,
        model: ModelFacts,
        alive: dict[str, _Worker],
        devices: list[str],
        now: float,
        state: _State,
    ) -> Placement:
        per_device, backlog = state.entries, state.backlog
        holders = [(d, w) for d, es in per_device.items() for m, w, _ in es if m == model.name]
        best_hit = None
        if holders:
            best_hit = min(holders, key=lambda dw: (backlog[dw[1]], dw[1]))
            self._set_clock(state.clocks[best_hit[0]])
            if backlog[best_hit[1]] < SCALE_OUT_QUEUE:
                return Placement(best_hit[0], best_hit[1], alive[best_hit[1]].queue, hit=True)
        holding = {w for _, w in holders}
        options = []  # (cost, device, worker, victims)
        too_large = []
        for device in devices:
            cap = state.caps[device]
            if model.bytes > cap:
                too_large.append((device, cap))
                continue
            candidates = [w for w in alive.values() if w.device == device and w.name not in holding]
            if not candidates:
                continue
            target = min(candidates, key=lambda w: (backlog[w.name], w.name))
            used = _used(per_device[device])
            need = model.bytes - (cap - used)
            if best_hit is not None:
                # a second copy only into free memory: never evict to scale out
                if need <= 0:
                    options.append((0, device, target, []))
                continue
            self._set_clock(state.clocks[device])
            facts = self._policy_entries(device, per_device[device], state.pins[device])
            incoming = Entry(
                model.name,
                model.bytes,
                model.load_s,
                model.exec_s,
                inserted_at=now,
                last_used=now,
                pinned=True,
            )
            chosen = self.policy.victims([e for e, _ in facts], incoming, need, state.requests, now)
            if chosen is None:
                continue
            by_id = {id(e): s for e, s in facts}
            victims = [(e, by_id[id(e)]) for e in chosen]
            options.append((sum(e.bytes for e in chosen), device, target, victims))
        if best_hit is not None and not options:
            return Placement(best_hit[0], best_hit[1], alive[best_hit[1]].queue, hit=True)
        if not options:
            if too_large and len(too_large) == len(devices):
                caps = ", ".join(f"{d}: {c} bytes" for d, c in too_large)
                raise ModelTooLarge(
                    f"model {model.name!r} needs {model.bytes} bytes, more than the whole memory "
                    f"cap ({caps})"
                )
            raise MemoryBusy(
                f"no room for model {model.name!r} ({model.bytes} bytes): the memory is held by "
                "models that are executing or loading; retry shortly"
            )
        _, device, target, victims = min(options, key=lambda o: (o[0], o[1]))
        placement = Placement(device, target.name, target.queue, hit=False)
        for entry, s in victims:
            victim_model, victim_worker = unslot(s)
            placement.evicted.append((victim_model, victim_worker))
            if victim_worker == target.name:
                placement.evict_here.append(victim_model)
            else:
                placement.wait_for.append(s)
            self.policy.on_evict(entry, now)
        return placement

    def _load_clock(self, device: str) -> None:
        self._set_clock(float(self.r.get(key("clock", device)) or 0.0))

    def _set_clock(self, clock: float) -> None:
        """Policies with a clock (GDSF) decide with the device's stored one."""
        if hasattr(self.policy, "clock"):
            self.policy.clock = clock

    def _commit(self, pipe, model: ModelFacts, p: Placement, now: float, state: _State) -> None:
        s = slot(model.name, p.worker)
        pipe.hincrby(key("pins", p.device), s, 1)
        pipe.hset(key("used", p.device), s, now)
        pipe.hincrby(key("stats", model.name), "requests", 1)
        pipe.incr(key("requests"))
        requests = state.model_requests + 1
        entry = Entry(
            model.name,
            model.bytes,
            model.load_s,
            model.exec_s,
            requests=requests,
            inserted_at=now,
            last_used=now,
        )
        if p.hit:
            # the policy's state lives in the stored priority (LFU keeps its insert-time
            # count there): a hit starts from it, so policies that leave it alone keep it
            stored = self.r.hget(key("priority", p.device), s)
            entry.priority = float(stored) if stored is not None else 0.0
            self.policy.on_hit(entry, now)
        else:
            self.policy.on_insert(entry, now)
        pipe.hset(key("priority", p.device), s, entry.priority)
        pipe.hincrby(key("hits" if p.hit else "misses", p.device), model.name, 1)
        if p.hit:
            return
        pipe.hset(key("entries", p.device), s, _loading_entry(model, now))
        for victim_model, victim_worker in p.evicted:
            v = slot(victim_model, victim_worker)
            for name in ("entries", "used", "priority"):
                pipe.hdel(key(name, p.device), v)
            pipe.hset(key("releasing", p.device), v, 1)
            pipe.hincrby(key("evictions", p.device), self.policy_name, 1)
        if hasattr(self.policy, "clock"):
            pipe.set(key("clock", p.device), self.policy.clock)

    # -- what workers report -------------------------------------------------------------

    def loaded(
        self,
        device: str,
        model: str,
        worker: str,
        observed_bytes: int | None,
        load_s: float,
        rss_growth: int | None = None,
    ) -> bool:
        """The interpreter is ready: correct the reserved bytes with ``observed_bytes``
        (``None``: keep the reservation, e.g. a profile the worker's measure stays within, or
        the worker already held it after Redis lost its state). If the model is larger than
        reserved and idle models cannot make room, its reservation is given back and False
        returned: the worker drops it, the cap holds. ``rss_growth``: the worker's resident
        memory increase at the load, kept with the load time in the model's statistics
        (``observed_bytes`` in ``/system/functions``)."""
        s = slot(model, worker)
        seen = {} if rss_growth is None else {"observed_bytes": rss_growth, "load_s": load_s}
        measured = "" if observed_bytes is None else max(int(observed_bytes), 1)
        fields = {**seen, **({"bytes": measured, "load_s": load_s} if measured else {})}
        done = self._ready_script(
            keys=[key("entries", device), key("stats", model)],
            args=[s, measured, *(x for kv in fields.items() for x in kv)],
        )
        if done != b"grow":  # within its reservation the device stays within the cap
            return True
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key("entries", device), key("pins", device))
                    raw = pipe.hget(key("entries", device), s)
                    if raw is None:  # evicted or forgotten meanwhile
                        pipe.unwatch()
                        if seen:
                            self.r.hset(key("stats", model), mapping=seen)
                        return True
                    doc = json.loads(raw)
                    reserved = int(doc["bytes"])
                    if observed_bytes is not None:
                        doc["bytes"] = max(int(observed_bytes), 1)
                    doc["state"] = "ready"
                    # within its reservation the device stays within the cap: nothing to check
                    overflow = (
                        self._overflow_victims(device, s, doc["bytes"])
                        if doc["bytes"] > reserved
                        else []
                    )
                    if overflow is None:
                        pipe.unwatch()
                        self.failed_load(device, model, worker)
                        # the next placement reserves enough
                        self.r.hset(key("stats", model), mapping={**seen, "bytes": doc["bytes"]})
                        return False
                    pipe.multi()
                    pipe.hset(key("entries", device), s, json.dumps(doc))
                    if observed_bytes is not None:
                        seen.update(bytes=doc["bytes"], load_s=load_s)
                    if seen:
                        pipe.hset(key("stats", model), mapping=seen)
                    self._evict_now(pipe, device, overflow)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _overflow_victims(self, device: str, loaded_slot: str, new_bytes: int) -> list[str] | None:
        """Slots to evict when a load turned out larger than reserved and the device's total
        now exceeds its cap (the policy chooses among idle models; none: the overflow stays
        until the next placement, and is logged in ``/system/cache`` as used > cap)."""
        alive, _ = self.workers()
        entries = self._entries(device, alive)
        used = sum(
            new_bytes if slot(m, w) == loaded_slot else int(doc["bytes"]) for m, w, doc in entries
        )
        need = used - self._cap(device)
        if need <= 0:
            return []
        pins = _decode(self.r.hgetall(key("pins", device)))
        self._load_clock(device)
        facts = [
            (e, s)
            for e, s in self._policy_entries(device, entries, pins)
            if s != loaded_slot and not e.pinned
        ]
        now = time.time()
        chosen = self.policy.victims(
            [e for e, _ in facts],
            Entry("", 0, 0.0, 0.0, pinned=True),
            need,
            int(self.r.get(key("requests")) or 0),
            now,
        )
        if chosen is None:
            return None
        by_id = {id(e): s for e, s in facts}
        return [by_id[id(e)] for e in chosen]

    def _evict_now(self, pipe, device: str, slots: list[str]) -> None:
        """Queue the workers' drops (at the front of their queues) and account the evictions."""
        from rq import Queue
        from rq.serializers import JSONSerializer

        for v in slots:
            victim_model, victim_worker = unslot(v)
            for name in ("entries", "used", "priority"):
                pipe.hdel(key(name, device), v)
            pipe.hset(key("releasing", device), v, 1)
            pipe.hincrby(key("evictions", device), self.policy_name, 1)
            Queue(
                f"brulee.{victim_worker}", connection=self.r, serializer=JSONSerializer
            ).enqueue_call(
                "agent.worker.evict", args=([victim_model],), pipeline=pipe, at_front=True
            )

    def expire_idle(self, proactive: Any, now: float | None = None) -> list[tuple[str, str]]:
        """Evict what a keep-alive policy (``agent.policies.proactive``) says has been idle too
        long, on every device; returns the ``(model, worker)`` copies evicted."""
        now = now or time.time()
        alive, _ = self.workers()
        evicted: list[tuple[str, str]] = []
        for device in sorted({w.device for w in alive.values()}):
            with self.r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key("entries", device), key("pins", device))
                        pins = _decode(self.r.hgetall(key("pins", device)))
                        facts = self._policy_entries(device, self._entries(device, alive), pins)
                        names = set(proactive.expired([e for e, _ in facts], now))
                        slots = [s for e, s in facts if e.name in names and not e.pinned]
                        if not slots:
                            pipe.unwatch()
                            break
                        pipe.multi()
                        self._evict_now(pipe, device, slots)
                        pipe.execute()
                        evicted += [unslot(s) for s in slots]
                        break
                    except redis.WatchError:
                        continue
        return evicted

    def prewarm(
        self,
        proactive: Any,
        facts: dict[str, ModelFacts],
        files: dict[str, str],
        now: float | None = None,
    ) -> list[tuple[str, str]]:
        """Load what a proactive policy wants warm, into free memory only (never evicting), on
        every device; ``facts``: the models that could be loaded, ``files``: their files in the
        model directory. Returns ``(model, worker)`` for each load enqueued
        (``agent.worker.prewarm`` jobs)."""
        now = now or time.time()
        alive, _ = self.workers()
        placed: list[tuple[str, str]] = []
        for device in sorted({w.device for w in alive.values()}):
            entries = self._entries(device, alive)
            cached = {m for m, _, _ in entries}
            free = self._cap(device) - _used(entries)
            if free <= 0:
                continue
            pipe = self.r.pipeline(transaction=False)
            names = sorted(m for m in facts if m not in cached)
            for m in names:
                pipe.hget(key("stats", m), "requests")
            counts = dict(zip(names, pipe.execute()))
            candidates = [
                Entry(m, facts[m].bytes, facts[m].load_s, facts[m].exec_s, int(counts[m] or 0))
                for m in names
            ]
            for name in proactive.prewarm(now, free, candidates):
                done = self._prewarm_one(device, facts[name], files[name], alive, now)
                if done:
                    placed.append((name, done))
        return placed

    def _prewarm_one(
        self, device: str, model: ModelFacts, file: str, alive: dict[str, _Worker], now: float
    ) -> str | None:
        """One proactive load: reserve the memory and enqueue the load on the least-loaded
        worker, in one transaction; None if the model got cached or the room went meanwhile."""
        from rq import Queue
        from rq.serializers import JSONSerializer

        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key("entries", device), key("pins", device))
                    entries = self._entries(device, alive)
                    used = _used(entries)
                    if any(m == model.name for m, _, _ in entries) or (
                        used + model.bytes > self._cap(device)
                    ):
                        pipe.unwatch()
                        return None
                    candidates = [w for w in alive.values() if w.device == device]
                    backlog = self._backlogs(candidates)
                    target = min(candidates, key=lambda w: (backlog[w.name], w.name))
                    s = slot(model.name, target.name)
                    entry = Entry(model.name, model.bytes, model.load_s, model.exec_s,
                                  inserted_at=now, last_used=now)  # fmt: skip
                    self.policy.on_insert(entry, now)
                    pipe.multi()
                    pipe.hset(key("entries", device), s, _loading_entry(model, now))
                    pipe.hincrby(key("pins", device), s, 1)
                    pipe.hset(key("used", device), s, now)
                    pipe.hset(key("priority", device), s, entry.priority)
                    pipe.hincrby(key("prewarms", device), model.name, 1)
                    Queue(target.queue, connection=self.r, serializer=JSONSerializer).enqueue_call(
                        "agent.worker.prewarm", args=(model.name, file), pipeline=pipe
                    )
                    pipe.execute()
                    return target.name
                except redis.WatchError:
                    continue

    def finished(
        self,
        device: str,
        model: str,
        worker: str,
        exec_s: float | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """A job is done (or failed): unpin, and store the model's exec time (the worker's
        moving average; None: unchanged). With ``pipe``, the commands join it (the caller
        executes it)."""
        own = pipe is None
        pipe = self.r.pipeline(transaction=False) if own else pipe
        pipe.hincrby(key("pins", device), slot(model, worker), -1)
        if exec_s is not None:
            pipe.hset(key("stats", model), "exec_s", exec_s)
        if own:
            pipe.execute()

    def failed_load(self, device: str, model: str, worker: str) -> None:
        """The model could not be loaded: give its reservation back."""
        s = slot(model, worker)
        pipe = self.r.pipeline()
        for name in ("entries", "used", "priority"):
            pipe.hdel(key(name, device), s)
        pipe.execute()

    def released(
        self, device: str, model: str, worker: str, freed_bytes: int | None = None
    ) -> None:
        """The worker dropped an evicted model; ``freed_bytes``: its resident-memory decrease
        (kept as the model's ``freed_bytes``, next to ``observed_bytes`` at load)."""
        pipe = self.r.pipeline()
        pipe.hdel(key("releasing", device), slot(model, worker))
        if freed_bytes is not None:
            pipe.hset(key("stats", model), "freed_bytes", freed_bytes)
        pipe.execute()

    def memory_stats(self, model: str) -> dict[str, int]:
        """What workers measured of ``model``: RSS increase at its last load, decrease at its
        last eviction (absent until it happened)."""
        observed, freed = self.r.hmget(key("stats", model), "observed_bytes", "freed_bytes")
        out = {}
        if observed is not None:
            out["observed_bytes"] = int(observed)
        if freed is not None:
            out["freed_bytes"] = int(freed)
        return out

    def is_releasing(self, device: str, slots: list[str]) -> bool:
        if not slots:
            return False
        return any(self.r.hmget(key("releasing", device), slots))

    # -- what the gateway shows ----------------------------------------------------------

    def _worker_rss(self, worker: str) -> dict[str, int]:
        """A worker's resident memory: read from ``/proc`` now when it runs on this host (so
        the workers of one snapshot are sampled together, not at their last heartbeats, which
        would count memory moving between two workers twice), else its last heartbeat's."""
        rss, base, pid, host = self.r.hmget(
            key("worker", worker), "rss", "baseline_rss", "pid", "host"
        )
        value = int(rss or 0)
        if pid and host and host.decode() == socket.gethostname():
            try:
                value = rss_bytes(int(pid))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile: keep the heartbeat's value
        return {"rss_bytes": value, "baseline_rss_bytes": int(base or 0)}

    def snapshot(self) -> dict[str, Any]:
        alive, _ = self.workers()
        devices: dict[str, Any] = {}
        for device in sorted({w.device for w in alive.values()}):
            entries = self._entries(device, alive)
            pins = _decode(self.r.hgetall(key("pins", device)))
            counters = {
                name: {k: int(v) for k, v in _decode(self.r.hgetall(key(name, device))).items()}
                for name in ("hits", "misses", "evictions", "prewarms")
            }
            backlog = self._backlogs(w for w in alive.values() if w.device == device)
            workers = {
                w.name: {
                    "queue": w.queue,
                    "queued": backlog[w.name],
                    **self._worker_rss(w.name),
                    "models": [],
                }
                for w in alive.values()
                if w.device == device
            }
            for model, worker, doc in sorted(entries):
                workers[worker]["models"].append(
                    {
                        "model": model,
                        "bytes": int(doc["bytes"]),
                        "state": doc["state"],
                        "in_flight": int(pins.get(slot(model, worker), 0)),
                    }
                )
            devices[device] = {
                "cap_bytes": self._cap(device),
                "used_bytes": _used(entries),
                "releasing": len(self.r.hkeys(key("releasing", device))),
                # the pool's real footprint: resident memory of its workers, and what they
                # held before any model (resident stays <= cap + baseline when eviction works)
                "rss_bytes": sum(w["rss_bytes"] for w in workers.values()),
                "baseline_rss_bytes": sum(w["baseline_rss_bytes"] for w in workers.values()),
                **counters,
                "workers": workers,
            }
        return {"policy": self.policy_name, "devices": devices}
