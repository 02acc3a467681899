"""Placement: which worker serves a request, and what is evicted to make room.

Every device's cache state lives in Redis (:mod:`agent.keys`), so any number of gateway
processes, workers and devices share it. Two ways in:

- :meth:`Placement.try_hit`, the warm-hit fast path: one Lua script (``lua/hit.lua``).
- :meth:`Placement.place`, everything else: one optimistic transaction (:mod:`agent.txn`)
  that reads the devices' copies, pins and admission queues, lets the eviction policy choose
  victims among unpinned copies (the same policy code as the simulator, built per decision
  with the device's stored GDSF clock), and commits the new copy (``loading``), the evictions
  and the work together. Concurrent misses never commit more than a device's cap.

A miss whose memory is held by pinned copies (executing or loading) — or that finds others
already waiting on the device — does not fail: it becomes a ticket in the device's admission
queue (:mod:`agent.waiting`, rule in :mod:`agent.admission`) in the same transaction.

The transaction is split in three parts, one module each, so that each reads on its own:

- the read: :func:`agent.cachestate.read_state` (everything a decision needs, one round trip);
- the decision: :func:`agent.decision.decide` (pure: where it goes, what is evicted, or a
  ticket), with the types and errors placement speaks in;
- the commit: this module (:meth:`Placement.place` runs the two above inside the ``WATCH``
  and writes what was decided in the ``MULTI``: the copy, its counters and priority, the
  evictions and the work).

The names other modules use stay importable from here (``__all__``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from agent import admission, evictions, hit, waiting
from agent.cachestate import (
    CacheState,
    ask_backlogs,
    backlogs_from,
    parse_entries,
    policy_entries,
    policy_for,
    read_state,
    used_bytes,
)
from agent.decision import (
    Decision,
    FunctionFailed,
    MemoryBusy,
    ModelFacts,
    ModelTooLarge,
    NoWorkers,
    QueueFull,
    RegistryChanged,
    Wait,
    decide,
)
from agent.hit import ARRIVALS_KEPT, SCALE_OUT_QUEUE
from agent.keys import key, slot
from agent.lifecycle import Copies
from agent.membership import Membership, PlacementError, Worker
from agent.policies import Entry, EvictionPolicy, make_policy, parse_policy_spec
from agent.scripts import Scripts
from agent.txn import transaction

__all__ = [
    "SCALE_OUT_QUEUE",
    "Decision",
    "FunctionFailed",
    "MemoryBusy",
    "ModelFacts",
    "ModelTooLarge",
    "NoWorkers",
    "Placement",
    "PlacementError",
    "QueueFull",
    "RegistryChanged",
    "Wait",
    "ask_backlogs",
    "backlogs_from",
    "key",
    "move_count",
    "parse_entries",
    "policy_entries",
    "used_bytes",
]


def move_count(client, device: str, model: str, old: str | None, new: str | None) -> None:
    """Move one request of ``model`` from the device's ``old`` outcome counter to ``new``
    (``"hit"``/``"miss"``; None: not counted there), through ``client`` (a pipeline or the
    connection)."""
    if old == new:
        return
    for outcome, step in ((old, -1), (new, 1)):
        if outcome is not None:
            client.hincrby(key("hits" if outcome == "hit" else "misses", device), model, step)


class Placement:
    """The decisions (see the module's docstring); ``members`` and ``copies`` are the state
    they act on, ``max_waiting`` the admission queue's bound per device."""

    def __init__(
        self,
        conn: redis.Redis,
        policy: str = "cremebrulee",
        max_waiting: int | None = None,
        **policy_options: Any,
    ) -> None:
        if max_waiting is None:  # ``brulee up --max-waiting`` reaches its processes so
            max_waiting = int(os.environ.get("BRULEE_MAX_WAITING") or admission.DEFAULT_MAX_WAITING)
        self.r = conn
        # ``--policy`` may carry options after the name: ``lru:trim=off``
        self.policy_name, spec_options = parse_policy_spec(policy)
        self.policy_options = {**spec_options, **policy_options}
        make_policy(self.policy_name, **self.policy_options)  # a bad one fails here, not later
        self.max_waiting = max_waiting
        self.scripts = Scripts(conn)
        self.copies = Copies(conn, self.scripts)
        self.members = Membership(conn, self.copies)
        self._hit_view: tuple[bytes, list[Worker], list[str]] | None = None
        self._deciding = threading.Lock()

    def uncount(self, device: str, req: dict[str, Any]) -> None:
        """A request placed again that could not be (it gets an error instead): it no longer
        counts as the hit or miss it was counted as."""
        move_count(self.r, device, req["model"], req.get("recount"), None)

    def policy(self, clock: float = 0.0) -> EvictionPolicy:
        return policy_for(self.policy_name, self.policy_options, clock)

    @functools.cached_property
    def rescores_hits(self) -> bool:
        """Whether a hit must recompute the copy's priority (GDSF), known from the policy's
        class once: a hit builds no policy object (``make_policy``, 0.1 ms each)."""
        return type(self.policy()).on_hit is not EvictionPolicy.on_hit

    # -- the warm-hit fast path --------------------------------------------------------------

    def try_hit(
        self,
        model: str,
        message: bytes,
        now: float | None = None,
        function: str = "",
        registry_version: bytes | None = None,
    ) -> Decision | None:
        """The warm-hit fast path (:func:`agent.hit.try_hit`): None when it is not a plain
        hit; then call :meth:`place`."""
        return hit.try_hit(self, model, message, now, function, registry_version)

    # -- the transaction -----------------------------------------------------------------------

    def place(
        self,
        model: ModelFacts,
        enqueue: Callable[[redis.client.Pipeline, Decision], Any],
        now: float | None = None,
        wait: Wait | None = None,
        admitting: Callable[[redis.client.Pipeline], bool] | None = None,
        only_worker: str | None = None,
        recount: str | None = None,
        hits_only: bool = False,
    ) -> tuple[Decision, Any]:
        """Decide where ``model`` runs and commit it, with ``enqueue(pipe, decision)`` adding
        the work to the same transaction; returns the decision and what ``enqueue`` returned.

        Without room: with ``wait``, the request joins the admission queue (the decision
        carries its ticket; ``enqueue`` is not called) or :class:`QueueFull` is raised;
        without it, :class:`MemoryBusy`. ``admitting``: this is the admission queue's head
        being placed (it may not wait again; the check runs inside the transaction, False:
        the ticket is gone, return ``(None, None)``). ``only_worker``: place on that worker.
        ``hits_only``: place it only if its model is cached (a waiting request behind a head
        that does not fit: it takes no memory). ``recount``: a request placed again (its copy
        was evicted while it was queued) that was counted as a ``hit`` or ``miss`` then: it is
        not counted as a new request (the policies' statistics stay true), only moved to its
        new outcome.
        Also raises NoWorkers, ModelTooLarge, or ``agent.txn.Contended``."""
        now = now or time.time()
        alive: dict[str, Worker] = {}

        def watched() -> list[str]:
            alive.clear()
            alive.update(self.members.alive())
            if not alive:
                raise NoWorkers(
                    "no worker is running: start one with `brulee up` or `brulee worker`"
                )
            devices = sorted({w.device for w in alive.values()})
            names = ("entries", "pins", "waiting")
            return [key(n, d) for d in devices for n in names] + [key("workers")]

        def body(pipe) -> tuple[Decision | None, Any]:
            if admitting is not None and not admitting(pipe):
                pipe.unwatch()
                return None, None
            devices = sorted({w.device for w in alive.values()})
            state = read_state(self.r, model.name, alive, devices)
            decision, policy = decide(
                self,
                model,
                alive,
                devices,
                now,
                state,
                admitting is not None,
                only_worker,
                hits_only,
            )
            if decision.ticket is not None:
                if admitting is not None:  # still no room for the head: it keeps waiting
                    if not decision.drain:
                        pipe.unwatch()
                        return decision, None
                    pipe.multi()
                else:
                    decision = waiting.join(self, pipe, model, decision, state, wait, alive, now)
                docs = {slot(m, w): doc for m, w, doc in state.entries[decision.device]}
                Copies.drain(pipe, decision.device, decision.drain, now, docs)
                return decision, None
            pipe.multi()
            if recount is None:
                self._record_arrival(pipe, model.name, now)
            self._commit(pipe, decision.served or model, decision, now, state, policy, recount)
            return decision, enqueue(pipe, decision)

        try:
            with self._deciding:  # one decision at a time per process: no self-contention
                return transaction(self.r, watched, body, what=f"placing {model.name!r}")
        except PlacementError:
            self._record_arrival(self.r, model.name, now)
            raise

    @staticmethod
    def _record_arrival(conn, model: str, now: float) -> None:
        conn.xadd(
            key("arrivals"), {"m": model, "t": repr(now)}, maxlen=ARRIVALS_KEPT, approximate=True
        )

    def _commit(
        self,
        pipe,
        model: ModelFacts,
        d: Decision,
        now: float,
        state: CacheState,
        policy: EvictionPolicy | None,
        recount: str | None = None,
    ) -> None:
        s = slot(model.name, d.worker)
        policy = policy or self.policy(state.clocks[d.device])
        pipe.hset(key("used", d.device), s, now)
        pipe.hincrby(key("queued", d.device), s, 1)
        if recount is None:
            pipe.hincrby(key("stats", model.name), "requests", 1)
            pipe.incr(key("requests"))
        entry = Entry(
            model.name,
            model.bytes,
            model.load_s,
            model.exec_s,
            requests=state.model_requests + (recount is None),
            inserted_at=now,
            last_used=now,
        )
        if d.hit:
            # a hit starts from the stored priority (LFU keeps its insert-time count there)
            stored = state.priority[d.device].get(s)
            entry.priority = float(stored) if stored is not None else 0.0
            policy.on_hit(entry, now)
        else:
            policy.on_insert(entry, now)
        pipe.hset(key("priority", d.device), s, entry.priority)
        move_count(pipe, d.device, model.name, recount, "hit" if d.hit else "miss")
        if d.hit:
            return
        Copies.reserve(
            pipe, d.device, model.name, d.worker, model.bytes, model.load_s, model.exec_s, now
        )
        if d.evicted:
            self.copies.evict(pipe, d.device, [slot(m, w) for m, w in d.evicted], self.policy_name)
            if d.why:
                evictions.record(pipe, d.device, d.why)
        if policy.uses_clock:
            pipe.set(key("clock", d.device), policy.clock)
