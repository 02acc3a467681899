"""The event loop: arrivals in workload order, finishes from a heap, workers serving FIFO
queues; proactive wake-ups. What a request does on arrival and when a worker starts it is the
placement's (``loadgen.sim.placement``); memory is the device's (``loadgen.sim.device``).

One ``Simulation`` is one (policy, cap) run; ``run`` builds it and returns its ``SimResult``.
The model of the device and why each choice is in ``loadgen/simulator.py``'s docstring.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence

from agent import admission
from agent.policies import Entry, make_policy
from loadgen.profiles import ModelCost
from loadgen.sim.device import Device
from loadgen.sim.fastloop import FastLoop
from loadgen.sim.hitrun import HitRuns
from loadgen.sim.inputs import (
    DEFAULT_DEADLINE_S,
    PLACEMENTS,
    SimulationError,
    _Oracle,
    check_models,
    parse_policy_spec,
)
from loadgen.sim.placement import ArrivalPlacement, StartPlacement
from loadgen.sim.results import LogHistogram, SimResult, finish_responses
from loadgen.sim.variants import SimVariants, VariantSpec
from loadgen.sim_workload import CompactWorkload


class Simulation:
    """The state one run shares between its parts: the trace's counters (``requests`` per
    model, ``total``, the oracle's ``pending``/``next_arrival``), the workers (``busy_until``,
    ``outstanding``, ``queues``), the finish-event heap, the device and the result."""

    def __init__(
        self,
        workload: CompactWorkload,
        profiles: Mapping[str, ModelCost],
        policy: str,
        cap_bytes: int,
        workers: int,
        seed: int,
        proactive: str | None,
        placement: str,
        deadline_s: float,
        max_waiting: int,
        on_served: Callable[[str, float, float], None] | None,
        variants: VariantSpec | None = None,
    ) -> None:
        self.workload = workload
        self.names = names = workload.names
        if variants is not None:  # the variant models are on the device too
            self.names = names = [*names, *variants.extra_names(names)]
        self.nm = nm = len(names)
        self.index = {n: i for i, n in enumerate(names)}
        self.cost = [profiles[n] for n in names]
        self.pending = [0] * nm  # requests arrived, not yet started or failed (the oracle's)
        self.oracle = oracle = _Oracle(self.index, self.pending)
        self.next_arrival = oracle.next_arrival  # (the bulk hit path sets it directly)
        pname, popts = parse_policy_spec(policy)
        self.pol = make_policy(pname, seed=seed, oracle=oracle, **popts)
        self.pro = None
        if proactive:
            from agent.policies.proactive import make_proactive

            ppname, ppopts = parse_policy_spec(proactive)
            self.pro = make_proactive(ppname, **ppopts)
        self.res = SimResult(policy, proactive or "none", cap_bytes, workers)
        self.hist = LogHistogram()
        self.resp_sum = 0.0
        self.on_served = on_served
        self.requests = [0] * nm  # per model, over the trace's life
        self.total = 0
        self.workers = workers
        self.busy_until = [0.0] * workers  # when the current request finishes (<= now: idle)
        self.outstanding = [0] * workers
        self.queues: list[list[tuple[float, int]]] = [[] for _ in range(workers)]
        self.qhead = [0] * workers
        self.events: list[tuple[float, int, int, int]] = []  # (time, seq, worker, model)
        self.seq = 0
        self.pro_next = math.inf
        self.dev = Device(
            names, self.cost, cap_bytes, self.pol, self.res, workload.t_first, workload.t_last
        )
        self.place = (
            ArrivalPlacement(self, deadline_s, max_waiting)
            if placement == "arrival"
            else StartPlacement(self)
        )
        if variants is not None:  # (the compiled loop and bulk hits then do not apply)
            self.place.variants = SimVariants(self, variants)

    # -- workers ------------------------------------------------------------------------------

    def least_loaded(self) -> int:
        """The worker with the fewest outstanding requests (ties: the lowest index)."""
        out = self.outstanding
        return out.index(min(out)) if self.workers > 1 else 0

    def execute(self, w: int, m: int, t: float, arrival: float) -> None:
        """Worker ``w`` runs ``m`` from ``t`` (its model ready): schedule the finish."""
        exe = self.cost[m].exec_s
        self.res.total_exec_s += exe
        self.busy_until[w] = t + exe
        self.seq += 1
        heapq.heappush(self.events, (t + exe, self.seq, w, m))
        # response time is known now: finish - arrival
        self.hist.add(t + exe - arrival)
        self.resp_sum += t + exe - arrival
        if self.on_served is not None:
            self.on_served(self.names[m], arrival, t + exe)

    def wake_up(self, t: float, m: int) -> None:
        """An admission wake-up at ``t`` (a waiter's deadline, a prewarm's load done)."""
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, -1, m))

    # -- proactive policy ---------------------------------------------------------------------

    def proactive_tick(self, now: float, entries: Sequence[Entry] | None = None) -> None:
        """Ask the proactive policy what to unload (idle models only) and what to prewarm
        (into free memory, loading in the background)."""
        pro, dev, res = self.pro, self.dev, self.res
        if pro is None:
            return
        for name in pro.expired(dev.refresh_pins(now) if entries is None else entries, now):
            m = self.index[name]
            if m in dev.cached and not dev.pins[m] and dev.ready_at[m] <= now:
                dev.evict(m, now)
                res.proactive_unloads += 1
        self.place.memory_freed(now)  # (a waiter's deadline may have passed too)
        free = dev.free
        if free > 0:
            cands = [
                dev.new_entry(m, self.requests[m])
                for m in range(self.nm)
                if m not in dev.cached and dev.size[m] <= free
            ]
            for name in pro.prewarm(now, free, cands) if cands else []:
                m = self.index[name]
                if m in dev.cached or dev.size[m] > dev.free:
                    continue
                dev.ready_at[m] = now + self.cost[m].load_s
                dev.insert(m, dev.new_entry(m, self.requests[m], now), now)
                res.prewarms += 1
                self.place.prewarmed(m)

    # -- the loop -----------------------------------------------------------------------------

    def finish_until(self, limit: float) -> None:
        """Process every finish (and proactive wake-up) at or before ``limit``."""
        events, dev, pro, place = self.events, self.dev, self.pro, self.place
        while True:
            tf = events[0][0] if events else math.inf
            if self.pro_next <= limit and self.pro_next < tf:
                now = self.pro_next
                self.proactive_tick(now)
                self.pro_next = pro.next_event_time(now) if pro else math.inf
                continue
            if tf > limit:
                return
            tf, _, w, m = heapq.heappop(events)
            if w < 0:  # admission wake-up: a waiter's deadline, a prewarm load done
                place.memory_freed(tf)
                continue
            dev.pins[m] -= 1
            self.outstanding[w] -= 1
            if dev.draining[m] and not dev.pins[m] and not dev.queued[m]:  # drained: evict
                dev.draining[m] = False
                dev.evict(m, tf)
                self.res.evictions += 1
            if pro is not None and m in dev.cached and not dev.pins[m]:
                dev.cached[m].pinned = dev.ready_at[m] > tf
                self.proactive_tick(tf, [dev.cached[m]])
            place.memory_freed(tf)  # the waiters first (they came before w's next request)
            if self.busy_until[w] <= tf:  # (admit may have started it already)
                place.start(w, tf)

    def run(self, progress: Callable[[int], None] | None = None) -> SimResult:
        pro, dev, place = self.pro, self.dev, self.place
        requests, pending = self.requests, self.pending
        if FastLoop.applies(self):
            FastLoop(self).run(progress)
            return self.finish()
        hit_runs = HitRuns(self) if HitRuns.applies(self) else None
        for tarr, times, funcs, nexts, farr in self.workload.chunks(
            with_next=self.pol.needs_oracle
        ):
            i, n = 0, len(times)
            while i < n:
                if hit_runs is not None and i >= hit_runs.retry_at:
                    j = hit_runs.advance(tarr, farr, nexts, i)
                    if j > i:
                        i = j
                        continue
                t, m = times[i], funcs[i]
                self.finish_until(t)
                self.total += 1
                requests[m] += 1
                pending[m] += 1
                if nexts is not None:
                    self.oracle.arrive(m, t, nexts[i])
                e = dev.cached.get(m)
                if e is not None:
                    e.requests = requests[m]
                if pro is not None:
                    pro.on_invocation(self.names[m], t)
                    self.proactive_tick(t)
                    self.pro_next = pro.next_event_time(t)
                place.arrive(t, m)
                i += 1
            if hit_runs is not None:
                hit_runs.retry_at = 0  # (indices restart with the next chunk)
            if progress is not None:
                progress(len(times))
        return self.finish()

    def finish(self) -> SimResult:
        """Drain the events and fill in the result's summary numbers."""
        res = self.res
        res.requests = self.total
        while self.events:  # with a proactive policy stop at the last finish, not its wake-ups
            self.finish_until(max(e[0] for e in self.events))
        if self.place.waiting:  # nothing left to free memory, yet requests wait: a bug
            raise RuntimeError(
                f"{len(self.place.waiting)} request(s) still waiting for memory at the end"
            )
        res.p99_admission_wait_s = self.place.wait_hist.quantile(0.99)
        self.dev.memory.close(max(self.busy_until, default=self.workload.t_first))
        finish_responses(res, self.hist, self.resp_sum)
        return res


def run(
    workload: CompactWorkload,
    profiles: Mapping[str, ModelCost],
    policy: str,
    cap_bytes: int,
    workers: int = 1,
    seed: int = 0,
    proactive: str | None = None,
    progress: Callable[[int], None] | None = None,
    placement: str = "start",
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_waiting: int = admission.DEFAULT_MAX_WAITING,
    on_served: Callable[[str, float, float], None] | None = None,
    variants: VariantSpec | None = None,
) -> SimResult:
    """Simulate one (policy, cap) over an already-compacted workload. ``policy`` may carry
    options (``parse_policy_spec``); ``progress(n)`` is called with requests done per chunk;
    ``on_served(model, arrival, finish)`` (optional) with every served request, in the order
    their execution starts.
    ``placement``: "start" (the cache decides when a worker starts a request) or "arrival"
    (as the live agent does; see ``loadgen.simulator``). Arrival placement only:
    ``deadline_s`` (the agent's sync timeout; ``math.inf``: no deadline, as for async jobs)
    and ``max_waiting`` (the admission queue's bound) rule the admission queue.
    ``variants``: models served by a smaller variant under pressure (``loadgen.sim.variants``;
    decided on arrival or as a worker starts the request, as ``placement`` says)."""
    if placement not in PLACEMENTS:
        raise SimulationError(
            f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}"
        )
    if not deadline_s > 0:  # also refuses NaN
        raise SimulationError(f"deadline must be > 0 seconds (inf: none), not {deadline_s}")
    if max_waiting < 0:
        raise SimulationError(f"max_waiting must be >= 0, not {max_waiting}")
    if workers < 1:
        raise SimulationError(f"workers must be >= 1, not {workers}")
    if cap_bytes <= 0:
        raise SimulationError(f"memory cap must be > 0 bytes, not {cap_bytes}")
    check_models(workload, profiles)
    if variants is not None:
        variants.check(profiles)
    sim = Simulation(
        workload, profiles, policy, cap_bytes, workers, seed, proactive, placement,
        deadline_s, max_waiting, on_served, variants,
    )  # fmt: skip
    return sim.run(progress)
