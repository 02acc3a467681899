"""When the cache decides, the two models ``loadgen.simulator`` describes:

- ``StartPlacement`` ("start"): a request joins the least-loaded worker's queue on arrival; the
  cache decides (hit, wait for a load, or evict and load) when the worker starts it.
- ``ArrivalPlacement`` ("arrival", the live agent's ``agent/placement.py``): the cache decides
  on arrival; a cached model's requests go to the worker holding it; a miss evicts at once (or
  waits in the admission queue, ``agent.admission``'s rule) and its worker loads it later.

Both are driven by ``loadgen.sim.engine.Simulation``: ``arrive`` for every request,
``start(w, now)`` when worker ``w`` is free, ``memory_freed`` when memory may have freed,
``prewarmed`` after a proactive prewarm. They read and change the simulation's shared state.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from agent import admission
from loadgen.sim.results import LogHistogram

if TYPE_CHECKING:
    from loadgen.sim.engine import Simulation


class StartPlacement:
    """The cache decides when a worker starts a request."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.waiting: list = []  # (no admission queue: a miss that cannot fit is rejected)
        self.wait_hist = LogHistogram()

    variants = None  # loadgen.sim.variants.SimVariants: the agent's variant rule, if any

    def arrive(self, t: float, m: int) -> None:
        sim = self.sim
        w = sim.least_loaded()
        sim.queues[w].append((t, m))
        sim.outstanding[w] += 1
        if sim.busy_until[w] <= t and sim.outstanding[w] == 1:
            self.start(w, t)

    def memory_freed(self, now: float) -> None:
        pass

    def prewarmed(self, m: int) -> None:
        pass

    def start(self, w: int, now: float) -> None:
        """Worker ``w`` is free at ``now``: serve the head of its queue (skipping rejects)."""
        sim = self.sim
        q, qhead = sim.queues[w], sim.qhead
        while qhead[w] < len(q):
            arrival, m = q[qhead[w]]
            qhead[w] += 1
            if self.serve(w, arrival, m, now):
                return
        if qhead[w] > 1024:  # drop the served prefix
            del q[: qhead[w]]
            qhead[w] = 0

    def serve(self, w: int, arrival: float, m: int, now: float) -> bool:
        """Worker ``w`` starts the request (``arrival``, ``m``) at ``now``: a hit, a wait for a
        load, or a miss the policy decides (False: rejected). The compiled loop
        (``loadgen.sim.fastloop``) calls it for its misses."""
        sim = self.sim
        dev, res, pol = sim.dev, sim.res, sim.pol
        if self.variants is not None:  # the agent's rule, decided as the worker starts it
            sim.oracle.ref = arrival
            m = self.variants.pick(self, now, m)
        sim.pending[m] -= 1
        e = dev.cached.get(m)
        t = now
        if e is not None:
            e.requests = sim.requests[m]
            e.last_used = now
            ready = dev.ready_at[m]
            if ready <= now:
                res.hits += 1
            else:
                res.load_waits += 1
                res.total_load_delay_s += ready - now
                t = ready
            pol.on_hit(e, now)
        else:
            size = dev.size[m]
            incoming = dev.new_entry(m, sim.requests[m], now)
            need = size - dev.free
            sim.oracle.ref = arrival  # the oracle's distances count from this request
            victims = (
                None
                if size > dev.cap_bytes
                else pol.victims(dev.refresh_pins(now), incoming, need, sim.total, now)
            )
            if victims is None:
                res.rejected += 1
                sim.outstanding[w] -= 1
                return False
            t = dev.evict_victims(victims, sim.index, now)
            res.evictions += len(victims)
            if size > dev.free:
                raise RuntimeError(f"policy {pol.name} freed too little for {dev.names[m]}")
            res.cold_starts += 1
            incoming.inserted_at = now
            dev.insert(m, incoming, now)
            load_s = sim.cost[m].load_s
            t += load_s
            dev.ready_at[m] = t
            res.total_load_delay_s += load_s
        dev.pins[m] += 1
        sim.execute(w, m, t, arrival)
        return True


class ArrivalPlacement:
    """The cache decides when a request arrives, as the agent does; misses that cannot be
    placed wait in the admission queue (``agent.admission``'s functions, the agent's rule)."""

    def __init__(self, sim: Simulation, deadline_s: float, max_waiting: int) -> None:
        self.sim = sim
        self.deadline_s, self.max_waiting = deadline_s, max_waiting
        # the admission queue, in order: (ticket, model, arrival time)
        self.waiting: list[tuple[admission.Ticket, int, float]] = []
        self.waiting_for: Counter[str] = Counter()  # requests waiting per model
        self.wait_hist = LogHistogram()
        self.tickets = 0

    variants = None  # loadgen.sim.variants.SimVariants: the agent's variant rule, if any

    def arrive(self, t: float, m: int) -> None:
        if self.variants is not None:
            m = self.variants.pick(self, t, m)
        w = self.place_on_arrival(t, m)
        if w is not None:
            self.enqueue(w, t, m, t)

    def memory_freed(self, now: float) -> None:
        if self.waiting:
            self.admit(now)

    def prewarmed(self, m: int) -> None:
        """Its load completing unpins it: try the waiters then."""
        self.sim.wake_up(self.sim.dev.ready_at[m], m)

    def start(self, w: int, now: float) -> None:
        """Worker ``w`` is free at ``now``: serve the head of its queue. Its model was placed at
        arrival (cached on ``w``: a hit, or a load this worker does now); if it was evicted
        meanwhile the request is re-placed (see ``loadgen.simulator``)."""
        sim = self.sim
        dev, res = sim.dev, sim.res
        q, qhead, outstanding = sim.queues[w], sim.qhead, sim.outstanding
        while qhead[w] < len(q):
            arrival, m = q[qhead[w]]
            qhead[w] += 1
            dev.queued[m] -= 1
            if m not in dev.cached or dev.holder[m] != w:  # evicted while queued: re-place it
                outstanding[w] -= 1
                if m in dev.cached:  # cached again, on another worker: queue there
                    self.enqueue(dev.holder[m], arrival, m, now)
                    continue
                if self.waiting:
                    self.purge(now)
                if admission.must_wait(len(self.waiting)) or self.place_miss(now, m, w) is None:
                    self.join_queue(now, m, arrival)
                    continue
                outstanding[w] += 1  # this worker loads it, now
            sim.pending[m] -= 1
            t = now
            ready_at = dev.ready_at[m]
            if ready_at == math.inf:  # placed on this worker, not loaded yet: load it
                res.cold_starts += 1
                t += sim.cost[m].load_s
                dev.ready_at[m] = t
                res.total_load_delay_s += sim.cost[m].load_s
            elif ready_at <= now:
                res.hits += 1
            else:  # a prewarm still loading it
                res.load_waits += 1
                res.total_load_delay_s += ready_at - now
                t = ready_at
            dev.pins[m] += 1
            sim.execute(w, m, t, arrival)
            return
        if qhead[w] > 1024:
            del q[: qhead[w]]
            qhead[w] = 0

    def enqueue(self, w: int, arrival: float, m: int, now: float) -> None:
        """A placed request joins worker ``w``'s queue (started if idle)."""
        sim = self.sim
        sim.queues[w].append((arrival, m))
        sim.dev.queued[m] += 1
        sim.outstanding[w] += 1
        if sim.outstanding[w] == 1:  # nothing queued or executing on it: idle
            self.start(w, now)

    def place_miss(self, t: float, m: int, w: int | None) -> int | None:
        """Make room for ``m`` (only executing and loading models are pinned) and reserve it
        for worker ``w`` (None: the least loaded), which loads it when it reaches the request.
        None: the pinned models hold the memory."""
        sim = self.sim
        dev, pol, queued, index = sim.dev, sim.pol, sim.dev.queued, sim.index
        incoming = dev.new_entry(m, sim.requests[m], t)
        need = dev.size[m] - dev.free
        # as the agent: copies nobody waits for first, then those with requests queued
        entries = dev.refresh_pins(t)
        for e in entries:
            e.pinned = e.pinned or queued[index[e.name]] > 0
        victims = pol.victims(entries, incoming, need, sim.total, t)
        if victims is None and any(queued[index[e.name]] for e in entries):
            # as the agent: models with requests queued are drained, not evicted under them
            for v in pol.victims(dev.refresh_pins(t), incoming, need, sim.total, t) or []:
                if queued[index[v.name]]:
                    dev.draining[index[v.name]] = True
        dev.refresh_pins(t)
        if victims is None:
            return None
        dev.evict_victims(victims, index, t)
        sim.res.evictions += len(victims)
        dev.insert(m, incoming, t)
        dev.ready_at[m] = math.inf  # loading: pinned until its worker has loaded it
        if w is None:
            w = sim.least_loaded()
        dev.holder[m] = w
        return w

    def place_on_arrival(self, t: float, m: int) -> int | None:
        """The worker whose queue this request joins, as the agent's placement decides it
        (None: it waits for memory, or failed): a cached model goes to the worker that holds
        it; a miss is placed at once when nobody waits and the policy frees its memory, else
        it joins the admission queue."""
        sim = self.sim
        dev = sim.dev
        e = dev.cached.get(m)
        if e is not None and not dev.draining[m]:
            e.last_used = t
            sim.pol.on_hit(e, t)
            return dev.holder[m]
        if dev.size[m] > dev.cap_bytes:  # can never be served
            sim.res.rejected += 1
            sim.pending[m] -= 1
            return None
        if self.waiting:
            self.purge(t)
        if not admission.must_wait(len(self.waiting)) and not dev.draining[m]:
            w = self.place_miss(t, m, None)
            if w is not None:
                return w
        self.join_queue(t, m, t)
        return None

    def join_queue(self, now: float, m: int, arrival: float) -> None:
        """A miss that cannot be placed now waits at the admission queue's tail (or is
        refused: full; or leaves at once: its deadline has passed)."""
        sim = self.sim
        name = sim.names[m]
        if admission.is_full(self.waiting_for, name, self.max_waiting):
            sim.res.queue_full += 1
            sim.pending[m] -= 1
            return
        self.tickets += 1
        ticket = admission.Ticket(
            str(self.tickets),
            name,
            sim.dev.size[m],
            now,
            admission.deadline(arrival, self.deadline_s),
        )
        if admission.expired(ticket, now):
            sim.res.timed_out += 1
            sim.pending[m] -= 1
            return
        self.waiting.append((ticket, m, arrival))
        self.waiting_for[name] += 1
        if ticket.deadline < math.inf:  # wake up at the deadline: it leaves, the next is tried
            sim.wake_up(ticket.deadline, m)

    def purge(self, now: float) -> None:
        """Waiting requests whose deadline has passed leave the admission queue."""
        sim, waiting = self.sim, self.waiting
        if any(admission.expired(tk, now) for tk, _, _ in waiting):
            for tk, m, _ in waiting:
                if admission.expired(tk, now):
                    sim.res.timed_out += 1
                    sim.pending[m] -= 1
                    self.waiting_for[sim.names[m]] -= 1
            waiting[:] = [x for x in waiting if not admission.expired(x[0], now)]

    def admit(self, now: float) -> None:
        """Memory may have freed: place the admission queue's head, then the next; behind one
        that cannot be placed, only requests whose model is cached go (they take no memory:
        nobody overtakes the head for memory). As the agent's ``waiting.admit``."""
        sim = self.sim
        dev, res, waiting = sim.dev, sim.res, self.waiting
        self.purge(now)
        blocked = False
        for item in list(waiting):
            if item not in waiting:  # gone meanwhile (a deadline passed)
                continue
            ticket, m, arrival = item
            e = dev.cached.get(m)
            if e is not None and not dev.draining[m]:  # cached: no memory needed
                e.last_used = now
                sim.pol.on_hit(e, now)
                w = dev.holder[m]
            elif blocked or dev.draining[m]:
                blocked = True
                continue
            else:
                w = self.place_miss(now, m, None)
                if w is None:
                    blocked = True
                    continue
            waiting.remove(item)
            self.waiting_for[sim.names[m]] -= 1
            res.admitted_after_wait += 1
            res.total_admission_wait_s += now - ticket.arrived
            self.wait_hist.add(now - ticket.arrived)
            self.enqueue(w, arrival, m, now)
