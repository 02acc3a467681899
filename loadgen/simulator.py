"""A discrete-event, trace-driven simulator of one device's model cache, using the SAME policy
objects as the live agent (``agent.policies.make_policy``; ``agent.policies.proactive``).

Model of the device (why each choice, see ``docs/simulation.md``):

- Requests arrive at their workload times. Each goes to the worker with the fewest outstanding
  requests (ties: lowest index); every worker serves its FIFO queue one request at a time.
- When a worker starts a request for model m: if m is resident it is a **hit** (exec only). If m
  is being loaded (by another worker or a prewarm) the worker waits for that load (m is never
  loaded twice; counted as a miss, not a cold start). Otherwise it is a **cold start**: the
  eviction policy picks victims for ``need = bytes(m) - free``; the worker unloads them
  (``unload_s`` each), loads m (``load_s``) and executes it (``exec_s``). If the policy answers
  ``None`` (executing/loading models are pinned) or m is larger than the cap, the request is
  **rejected** (counted, no response time).
- Model-load delay of a request = time it spent waiting for its model to load (``load_s`` for
  a cold start, the remaining load time for a waiter; unloads are not included).
- Response time = finish - arrival; percentiles come from a fixed log-binned histogram
  (``LogHistogram``: 100 bins per decade, relative error < 2.4 %), so memory does not grow with
  the number of requests; the workload is streamed through ``CompactWorkload`` chunks.
- Proactive policy (optional): consulted on every arrival, when a model stops executing and at
  its own ``next_event_time``; its unloads free memory at once, its prewarms load in the
  background (not on a worker) into free memory only.

Arrival placement (``placement="arrival"``), the live agent's model (``agent/placement.py``):
the cache decides when a request *arrives*, not when a worker starts it. A request for a cached
model joins the queue of the worker that holds it; a miss chooses its victims at once — only
models executing or loading are pinned (a placed miss's model counts as loading until its worker
has loaded it); requests merely queued do not pin, but as in the agent the policy chooses
among models nobody has requests queued for first, and only if that cannot free enough among
the others — and joins the least-loaded worker's queue,
which loads the model when it reaches the request; requests queued behind that load find the
model ready (hits, as the agent's ``X-Cache`` says).

Admission (arrival placement only; the rule and its functions are ``agent.admission``'s, the
same code as the agent's): a miss whose memory is held by pinned models waits in the device's
admission queue, first come first served (only the head may take memory; a new miss joins the
tail whenever anybody waits, even if it would fit). The head is tried, then the next, at every
event that can free memory or unblock the head: an execution finishing, a prewarm load
completing, a proactive unload, a waiting request's deadline. A request still waiting at its
deadline (arrival + ``deadline_s``) leaves (``timed_out``, the agent's 503); a miss for a new
model when ``max_waiting`` models wait (or when ``REQUESTS_PER_LOAD * max_waiting`` requests
wait) is refused (``queue_full``, the agent's 429); a miss for a model already waiting rides
along. Only a model larger than the
cap is ``rejected``. A request queued on a worker whose model was evicted meanwhile is
re-placed when its worker reaches it: if its model is cached again (on another worker) it moves
to that worker's queue; otherwise it is a miss again and goes through the same admission — the
worker loads the model itself if nobody waits and the policy frees the memory, else the request
joins the admission queue's tail (its deadline still counts from its arrival).

Everything is deterministic: ties are broken by index, the policies take ``seed``.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agent import admission
from agent.policies import Entry, make_policy
from agent.policies import parse_policy_spec as policy_spec
from agent.sizes import SizeError, parse_size
from loadgen.profiles import ModelCost
from loadgen.sim_workload import CompactWorkload


class SimulationError(ValueError):
    """Input the simulator cannot run on; the message names the problem."""


class LogHistogram:
    """Counts of positive values in log-spaced bins (``per_decade`` per factor 10) from ``lo``
    to ``hi``; a quantile is read as the geometric centre of its bin. Fixed memory."""

    def __init__(self, lo: float = 1e-6, hi: float = 1e6, per_decade: int = 100) -> None:
        self.lo, self.per_decade = lo, per_decade
        self.nbins = int(round(math.log10(hi / lo) * per_decade)) + 1
        self.counts = [0] * (self.nbins + 1)  # bin 0: values <= lo
        self.n = 0
        self._scale = per_decade / math.log(10)
        self._loglo = math.log(lo)

    def add(self, x: float) -> None:
        i = (
            0
            if x <= self.lo
            else min(self.nbins, 1 + int((math.log(x) - self._loglo) * self._scale))
        )
        self.counts[i] += 1
        self.n += 1

    def value(self, i: int) -> float:
        if i == 0:
            return self.lo
        return self.lo * 10 ** ((i - 0.5) / self.per_decade)

    def quantile(self, q: float) -> float:
        if not self.n:
            return math.nan
        target, acc = q * self.n, 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c:
                return self.value(i)
        return self.value(self.nbins)

    def cdf(self) -> list[tuple[float, float]]:
        """(value, fraction of values <= it) for every non-empty bin."""
        out, acc = [], 0
        for i, c in enumerate(self.counts):
            if c:
                acc += c
                out.append((self.value(i), acc / self.n))
        return out


@dataclass
class SimResult:
    """What one (policy, cap) run measured. ``memory_timeline``: (time, peak bytes used in the
    interval ending then), at most ``TIMELINE_POINTS`` points; ``response_cdf`` likewise."""

    policy: str
    proactive: str
    cap_bytes: int
    workers: int
    requests: int = 0
    hits: int = 0
    cold_starts: int = 0
    load_waits: int = 0
    rejected: int = 0
    evictions: int = 0
    proactive_unloads: int = 0
    prewarms: int = 0
    total_load_delay_s: float = 0.0
    total_exec_s: float = 0.0
    # admission (arrival placement): misses that waited for memory and were then placed, the
    # ones whose deadline passed while waiting (503) and the ones refused at a full queue (429);
    # the wait is over the admitted ones (time in the admission queue, part of response time)
    admitted_after_wait: int = 0
    timed_out: int = 0
    queue_full: int = 0
    total_admission_wait_s: float = 0.0
    p99_admission_wait_s: float = math.nan
    p50_s: float = math.nan
    p95_s: float = math.nan
    p99_s: float = math.nan
    mean_response_s: float = math.nan
    peak_memory_bytes: int = 0
    mean_memory_bytes: float = 0.0
    memory_timeline: list[tuple[float, int]] = field(default_factory=list)
    response_cdf: list[tuple[float, float]] = field(default_factory=list)

    @property
    def served(self) -> int:
        """Requests that got a response (not rejected, timed out or refused at a full queue)."""
        return self.requests - self.rejected - self.timed_out - self.queue_full

    @property
    def mean_admission_wait_s(self) -> float:
        """Mean time in the admission queue of the requests that waited and were placed."""
        n = self.admitted_after_wait
        return self.total_admission_wait_s / n if n else math.nan

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else math.nan

    @property
    def mean_load_delay_s(self) -> float:
        return self.total_load_delay_s / self.served if self.served else math.nan

    @property
    def mean_exec_s(self) -> float:
        return self.total_exec_s / self.served if self.served else math.nan

    @property
    def load_delay_ratio(self) -> float:
        """The paper's metric: mean model-load delay / mean execution latency."""
        return self.mean_load_delay_s / self.mean_exec_s if self.served else math.nan

    def summary(self) -> dict[str, Any]:
        """Flat numbers for the table/CSV (no timelines)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("memory_timeline", "response_cdf")}
        d.update(
            hit_ratio=self.hit_ratio,
            mean_load_delay_s=self.mean_load_delay_s,
            mean_exec_s=self.mean_exec_s,
            load_delay_ratio=self.load_delay_ratio,
            mean_admission_wait_s=self.mean_admission_wait_s,
        )
        return d


TIMELINE_POINTS = 500
DEFAULT_DEADLINE_S = 60.0  # the agent's sync timeout (agent.gateway.create_app's sync_timeout)
PLACEMENTS = ("start", "arrival")


def parse_cap(spec: str | int, total_bytes: int) -> int:
    """``"50%"`` of the workload's total model bytes, or a size (``"2e9"``, ``"2G"``)."""
    try:
        return parse_size(spec, what="memory cap", percent_of=total_bytes)
    except SizeError as exc:
        raise SimulationError(str(exc)) from None


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"cremebrulee:cost=increase:use_size=false"`` -> (name, options): the agent's parser
    (``agent.policies.parse_policy_spec``), its errors as ``SimulationError``."""
    try:
        return policy_spec(spec)
    except ValueError as exc:
        raise SimulationError(str(exc)) from None


class _Oracle:
    """``next_use`` for oracle policies, ranking models as the seed's oracle does: by when each
    model's next request comes in the trace after the request being decided. That is the
    arrival of the model's earliest request not yet started (it arrived and waits in a queue),
    else its next arrival (precomputed with the workload). It is reported on the decision's
    clock, ``now + (that arrival - ref)`` with ``ref`` the arrival of the request being decided
    (``now`` if unset), so that ``next_use - now``, CremeBrulee-oracle's distance, is the gap
    between the two requests in the trace rather than shrunk (or negative) by the queue's
    backlog. (The seed counts that gap in requests, we in seconds; the order is the same.)

    The event loop feeds it: ``arrive`` with every request, ``ref`` before a decision at the
    start of a request. ``pending`` is the loop's count of requests not yet started per model;
    they leave in arrival order (exact with one worker and start placement, approximate
    otherwise), so the earliest of them is the oldest of the model's ``pending[m]`` newest
    arrivals, which is all ``arrive`` keeps."""

    def __init__(self, index: Mapping[str, int], pending: list[int]):
        self.index, self.pending = index, pending
        self.next_arrival = [math.inf] * len(index)
        self.arrived: list[deque[float]] = [deque() for _ in index]
        self.ref: float | None = None

    def arrive(self, m: int, t: float, next_t: float) -> None:
        """A request for model ``m`` arrived at ``t`` (counted in ``pending`` already); the
        model's next request after it arrives at ``next_t``."""
        self.arrived[m].append(t)
        self._drop_started(m)
        self.next_arrival[m] = next_t

    def _drop_started(self, m: int) -> None:
        q = self.arrived[m]
        while len(q) > self.pending[m]:
            q.popleft()

    def next_use(self, name: str, now: float) -> float:
        m = self.index[name]
        self._drop_started(m)
        q = self.arrived[m]
        t = q[0] if q else self.next_arrival[m]
        return now + (t - (now if self.ref is None else self.ref))


def check_models(workload: CompactWorkload, profiles: Mapping[str, ModelCost]) -> None:
    """Before a run: every workload function must have a profile with a known size."""
    missing = sorted(n for n in workload.names if n not in profiles)
    if missing:
        raise SimulationError(
            f"{workload.source}: {len(missing)} model(s) not in the profiles: {', '.join(missing)}"
        )
    sizeless = sorted(n for n in workload.names if not profiles[n].bytes)
    if sizeless:
        raise SimulationError(
            f"profiles give no size for {', '.join(sizeless)}: pass --sizes (the seed's "
            "models.m5.json has loaded_size 0)"
        )


def workload_bytes(workload: CompactWorkload, profiles: Mapping[str, ModelCost]) -> int:
    """Total bytes of the distinct models the workload uses (what a 100 % cap holds)."""
    return sum(int(profiles[n].bytes or 0) for n in workload.names)


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
) -> SimResult:
    """Simulate one (policy, cap) over an already-compacted workload. ``policy`` may carry
    options (``parse_policy_spec``); ``progress(n)`` is called with requests done per chunk;
    ``on_served(model, arrival, finish)`` (optional) with every served request, in the order
    their execution starts.
    ``placement``: "start" (the cache decides when a worker starts a request) or "arrival"
    (as the live agent does; see the module docstring). Arrival placement only:
    ``deadline_s`` (the agent's sync timeout; ``math.inf``: no deadline, as for async jobs)
    and ``max_waiting`` (the admission queue's bound) rule the admission queue."""
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
    names = workload.names
    nm = len(names)
    index = {n: i for i, n in enumerate(names)}
    cost = [profiles[n] for n in names]
    size = [int(c.bytes or 0) for c in cost]
    pending = [0] * nm
    oracle = _Oracle(index, pending)
    pname, popts = parse_policy_spec(policy)
    pol = make_policy(pname, seed=seed, oracle=oracle, **popts)
    pro = None
    if proactive:
        from agent.policies.proactive import make_proactive

        ppname, ppopts = parse_policy_spec(proactive)
        pro = make_proactive(ppname, **ppopts)
    res = SimResult(policy, proactive or "none", cap_bytes, workers)
    hist = LogHistogram()
    resp_sum = [0.0]

    requests = [0] * nm  # per model, over the trace's life
    cached: dict[int, Entry] = {}  # model -> entry (resident or loading)
    ready_at = [0.0] * nm  # when a cached model's load completes
    pins = [0] * nm  # requests executing m or waiting for its load (not merely queued)
    queued = [0] * nm  # arrival placement: requests placed on m's holder, not yet started
    draining = [False] * nm  # arrival placement: cached, takes no new requests, goes when idle
    holder = [0] * nm  # arrival placement: the worker that holds m
    # arrival placement: the admission queue, in order: (ticket, model, arrival time)
    waiting: list[tuple[admission.Ticket, int, float]] = []
    waiting_for: Counter[str] = Counter()  # requests waiting per model (the bound counts models)
    wait_hist = LogHistogram()
    tickets = 0
    used = 0
    total = 0
    # workers
    busy_until = [0.0] * workers  # when the current request finishes (<= now: idle)
    outstanding = [0] * workers
    queues: list[list[tuple[float, int]]] = [[] for _ in range(workers)]
    qhead = [0] * workers
    events: list[tuple[float, int, int, int]] = []  # (time, seq, worker, model) finishes
    seq = 0
    # memory timeline
    t0, t1 = workload.t_first, max(workload.t_last, workload.t_first + 1e-9)
    step = (t1 - t0) / TIMELINE_POINTS
    tl_next, tl_peak = t0 + step, 0
    mem_area, mem_t = 0.0, t0

    def set_used(now: float, value: int) -> None:
        nonlocal used, tl_peak, mem_area, mem_t, tl_next
        while now > tl_next and len(res.memory_timeline) < TIMELINE_POINTS:
            res.memory_timeline.append((tl_next, tl_peak))
            tl_peak = used
            tl_next += step
        mem_area += used * (now - mem_t)
        mem_t = now
        used = value
        tl_peak = max(tl_peak, used)
        res.peak_memory_bytes = max(res.peak_memory_bytes, used)

    def refresh_pins(now: float) -> list[Entry]:
        entries = []
        for m, e in cached.items():
            e.pinned = pins[m] > 0 or ready_at[m] > now or draining[m]
            entries.append(e)
        return entries

    def evict(m: int, now: float) -> None:
        e = cached.pop(m)
        pol.on_evict(e, now)
        set_used(now, used - size[m])

    def execute(w: int, m: int, t: float, arrival: float) -> None:
        """Worker ``w`` runs ``m`` from ``t`` (its model ready): schedule the finish."""
        nonlocal seq
        exe = cost[m].exec_s
        res.total_exec_s += exe
        busy_until[w] = t + exe
        seq += 1
        heapq.heappush(events, (t + exe, seq, w, m))
        # response time is known now: finish - arrival
        hist.add(t + exe - arrival)
        resp_sum[0] += t + exe - arrival
        if on_served is not None:
            on_served(names[m], arrival, t + exe)

    def start(w: int, now: float) -> None:
        """Worker ``w`` is free at ``now``: serve the head of its queue (skipping rejects)."""
        q = queues[w]
        while qhead[w] < len(q):
            arrival, m = q[qhead[w]]
            qhead[w] += 1
            pending[m] -= 1
            e = cached.get(m)
            t = now
            if e is not None:
                e.requests = requests[m]
                e.last_used = now
                if ready_at[m] <= now:
                    res.hits += 1
                else:
                    res.load_waits += 1
                    res.total_load_delay_s += ready_at[m] - now
                    t = ready_at[m]
                pol.on_hit(e, now)
            else:
                c = cost[m]
                incoming = Entry(names[m], size[m], c.load_s, c.exec_s, requests[m], now, now)
                need = size[m] - (cap_bytes - used)
                oracle.ref = arrival  # the oracle's distances count from this request
                victims = (
                    None
                    if size[m] > cap_bytes
                    else pol.victims(refresh_pins(now), incoming, need, total, now)
                )
                if victims is None:
                    res.rejected += 1
                    outstanding[w] -= 1
                    continue
                for v in victims:
                    vm = index[v.name]
                    if pins[vm] or ready_at[vm] > now:
                        raise RuntimeError(f"policy {pol.name} evicted pinned model {v.name}")
                    t += cost[vm].unload_s
                    evict(vm, now)
                    res.evictions += 1
                if size[m] > cap_bytes - used:
                    raise RuntimeError(f"policy {pol.name} freed too little for {names[m]}")
                res.cold_starts += 1
                incoming.inserted_at = now
                cached[m] = incoming
                set_used(now, used + size[m])
                pol.on_insert(incoming, now)
                t += c.load_s
                ready_at[m] = t
                res.total_load_delay_s += c.load_s
            pins[m] += 1
            execute(w, m, t, arrival)
            return
        if qhead[w] > 1024:  # drop the served prefix
            del q[: qhead[w]]
            qhead[w] = 0

    def start_placed(w: int, now: float) -> None:
        """Arrival placement: worker ``w`` is free at ``now``: serve the head of its queue. Its
        model was placed at arrival (cached on ``w``: a hit, or a load this worker does now);
        if it was evicted meanwhile the request is re-placed (see the module docstring)."""
        q = queues[w]
        while qhead[w] < len(q):
            arrival, m = q[qhead[w]]
            qhead[w] += 1
            queued[m] -= 1
            if m not in cached or holder[m] != w:  # evicted while queued: re-place it
                outstanding[w] -= 1
                if m in cached:  # cached again, on another worker: queue there
                    enqueue(holder[m], arrival, m, now)
                    continue
                if waiting:
                    purge(now)
                if admission.must_wait(len(waiting)) or place_miss(now, m, w) is None:
                    join_queue(now, m, arrival)
                    continue
                outstanding[w] += 1  # this worker loads it, now
            pending[m] -= 1
            t = now
            if ready_at[m] == math.inf:  # placed on this worker, not loaded yet: load it
                res.cold_starts += 1
                t += cost[m].load_s
                ready_at[m] = t
                res.total_load_delay_s += cost[m].load_s
            elif ready_at[m] <= now:
                res.hits += 1
            else:  # a prewarm still loading it
                res.load_waits += 1
                res.total_load_delay_s += ready_at[m] - now
                t = ready_at[m]
            pins[m] += 1
            execute(w, m, t, arrival)
            return
        if qhead[w] > 1024:
            del q[: qhead[w]]
            qhead[w] = 0

    def enqueue(w: int, arrival: float, m: int, now: float) -> None:
        """Arrival placement: a placed request joins worker ``w``'s queue (started if idle)."""
        queues[w].append((arrival, m))
        queued[m] += 1
        outstanding[w] += 1
        if outstanding[w] == 1:  # nothing queued or executing on it: idle
            start_placed(w, now)

    def place_miss(t: float, m: int, w: int | None) -> int | None:
        """Arrival placement: make room for ``m`` (only executing and loading models are
        pinned) and reserve it for worker ``w`` (None: the least loaded), which loads it when
        it reaches the request. None: the pinned models hold the memory."""
        c = cost[m]
        incoming = Entry(names[m], size[m], c.load_s, c.exec_s, requests[m], t, t)
        need = size[m] - (cap_bytes - used)
        # as the agent: copies nobody waits for first, then those with requests queued
        entries = refresh_pins(t)
        for e in entries:
            e.pinned = e.pinned or queued[index[e.name]] > 0
        victims = pol.victims(entries, incoming, need, total, t)
        if victims is None and any(queued[index[e.name]] for e in entries):
            # as the agent: models with requests queued are drained, not evicted under them
            for v in pol.victims(refresh_pins(t), incoming, need, total, t) or []:
                if queued[index[v.name]]:
                    draining[index[v.name]] = True
        refresh_pins(t)
        if victims is None:
            return None
        for v in victims:
            vm = index[v.name]
            if pins[vm] or ready_at[vm] > t:
                raise RuntimeError(f"policy {pol.name} evicted pinned model {v.name}")
            evict(vm, t)
            res.evictions += 1
        cached[m] = incoming
        set_used(t, used + size[m])
        pol.on_insert(incoming, t)
        ready_at[m] = math.inf  # loading: pinned until its worker has loaded it
        if w is None:
            w = outstanding.index(min(outstanding)) if workers > 1 else 0
        holder[m] = w
        return w

    def place_on_arrival(t: float, m: int) -> int | None:
        """Arrival placement: the worker whose queue this request joins, as the agent's
        placement decides it (None: it waits for memory, or failed): a cached model goes to
        the worker that holds it; a miss is placed at once when nobody waits and the policy
        frees its memory, else it joins the admission queue."""
        e = cached.get(m)
        if e is not None and not draining[m]:
            e.last_used = t
            pol.on_hit(e, t)
            return holder[m]
        if size[m] > cap_bytes:  # can never be served
            res.rejected += 1
            pending[m] -= 1
            return None
        if waiting:
            purge(t)
        if not admission.must_wait(len(waiting)) and not draining[m]:
            w = place_miss(t, m, None)
            if w is not None:
                return w
        join_queue(t, m, t)
        return None

    def join_queue(now: float, m: int, arrival: float) -> None:
        """A miss that cannot be placed now waits at the admission queue's tail (or is
        refused: full; or leaves at once: its deadline has passed)."""
        nonlocal seq, tickets
        if admission.is_full(waiting_for, names[m], max_waiting):
            res.queue_full += 1
            pending[m] -= 1
            return
        tickets += 1
        ticket = admission.Ticket(
            str(tickets), names[m], size[m], now, admission.deadline(arrival, deadline_s)
        )
        if admission.expired(ticket, now):
            res.timed_out += 1
            pending[m] -= 1
            return
        waiting.append((ticket, m, arrival))
        waiting_for[names[m]] += 1
        if ticket.deadline < math.inf:  # wake up at the deadline: it leaves, the next is tried
            seq += 1
            heapq.heappush(events, (ticket.deadline, seq, -1, m))

    def purge(now: float) -> None:
        """Waiting requests whose deadline has passed leave the admission queue."""
        if any(admission.expired(tk, now) for tk, _, _ in waiting):
            for tk, m, _ in waiting:
                if admission.expired(tk, now):
                    res.timed_out += 1
                    pending[m] -= 1
                    waiting_for[names[m]] -= 1
            waiting[:] = [x for x in waiting if not admission.expired(x[0], now)]

    def admit(now: float) -> None:
        """Memory may have freed: place the admission queue's head, then the next; behind one
        that cannot be placed, only requests whose model is cached go (they take no memory:
        nobody overtakes the head for memory). As the agent's ``waiting.admit``."""
        purge(now)
        blocked = False
        for item in list(waiting):
            if item not in waiting:  # gone meanwhile (a deadline passed)
                continue
            ticket, m, arrival = item
            e = cached.get(m)
            if e is not None and not draining[m]:  # cached: no memory needed
                e.last_used = now
                pol.on_hit(e, now)
                w = holder[m]
            elif blocked or draining[m]:
                blocked = True
                continue
            else:
                w = place_miss(now, m, None)
                if w is None:
                    blocked = True
                    continue
            waiting.remove(item)
            waiting_for[names[m]] -= 1
            res.admitted_after_wait += 1
            res.total_admission_wait_s += now - ticket.arrived
            wait_hist.add(now - ticket.arrived)
            enqueue(w, arrival, m, now)

    if placement == "arrival":
        start = start_placed  # noqa: F811 (the same event loop, the other decision point)

    def proactive_tick(now: float, entries: Sequence[Entry] | None = None) -> None:
        nonlocal seq
        if pro is None:
            return
        for name in pro.expired(refresh_pins(now) if entries is None else entries, now):
            m = index[name]
            if m in cached and not pins[m] and ready_at[m] <= now:
                evict(m, now)
                res.proactive_unloads += 1
        if waiting:  # an unload freed memory (a waiter's deadline may have passed too)
            admit(now)
        free = cap_bytes - used
        if free > 0:
            cands = [
                Entry(names[m], size[m], cost[m].load_s, cost[m].exec_s, requests[m])
                for m in range(nm)
                if m not in cached and size[m] <= free
            ]
            for name in pro.prewarm(now, free, cands) if cands else []:
                m = index[name]
                if m in cached or size[m] > cap_bytes - used:
                    continue
                e = Entry(names[m], size[m], cost[m].load_s, cost[m].exec_s, requests[m], now, now)
                cached[m] = e
                ready_at[m] = now + cost[m].load_s
                set_used(now, used + size[m])
                pol.on_insert(e, now)
                res.prewarms += 1
                if placement == "arrival":  # its load completing unpins it: try the waiters
                    seq += 1
                    heapq.heappush(events, (ready_at[m], seq, -1, m))

    pro_next = math.inf

    def finish_until(limit: float) -> None:
        """Process every finish (and proactive wake-up) at or before ``limit``."""
        nonlocal pro_next
        while True:
            tf = events[0][0] if events else math.inf
            if pro_next <= limit and pro_next < tf:
                now = pro_next
                proactive_tick(now)
                pro_next = pro.next_event_time(now) if pro else math.inf
                continue
            if tf > limit:
                return
            tf, _, w, m = heapq.heappop(events)
            if w < 0:  # admission wake-up: a waiter's deadline, a prewarm load done
                if waiting:
                    admit(tf)
                continue
            pins[m] -= 1
            outstanding[w] -= 1
            if draining[m] and not pins[m] and not queued[m]:  # drained: evicted now
                draining[m] = False
                evict(m, tf)
                res.evictions += 1
            if pro is not None and m in cached and not pins[m]:
                cached[m].pinned = ready_at[m] > tf
                proactive_tick(tf, [cached[m]])
            if waiting:  # memory freed: the waiters first (they came before w's next request)
                admit(tf)
            if busy_until[w] <= tf:  # (admit may have started it already)
                start(w, tf)

    use_next = pol.needs_oracle
    for _, times, funcs, nexts in workload.chunks(with_next=use_next):
        for i, t in enumerate(times):
            m = funcs[i]
            finish_until(t)
            total += 1
            requests[m] += 1
            pending[m] += 1
            if nexts is not None:
                oracle.arrive(m, t, nexts[i])
            e = cached.get(m)
            if e is not None:
                e.requests = requests[m]
            if pro is not None:
                pro.on_invocation(names[m], t)
                proactive_tick(t)
                pro_next = pro.next_event_time(t)
            if placement == "arrival":
                w = place_on_arrival(t, m)
                if w is not None:
                    enqueue(w, t, m, t)
                continue
            w = outstanding.index(min(outstanding)) if workers > 1 else 0
            queues[w].append((t, m))
            outstanding[w] += 1
            if busy_until[w] <= t and outstanding[w] == 1:
                start(w, t)
        if progress is not None:
            progress(len(times))
    res.requests = total
    while events:  # drain; with a proactive policy stop at the last finish, not its wake-ups
        finish_until(max(e[0] for e in events))
    if waiting:  # nothing left to free memory, yet requests wait: a bug, not a result
        raise RuntimeError(f"{len(waiting)} request(s) still waiting for memory at the end")
    res.p99_admission_wait_s = wait_hist.quantile(0.99)
    end = max(mem_t, max(busy_until, default=t0))
    set_used(end, used)
    span = end - t0
    res.mean_memory_bytes = mem_area / span if span > 0 else float(used)
    res.p50_s, res.p95_s, res.p99_s = (hist.quantile(q) for q in (0.5, 0.95, 0.99))
    if hist.n:
        res.mean_response_s = resp_sum[0] / hist.n
    cdf = hist.cdf()
    stride = max(1, len(cdf) // TIMELINE_POINTS)
    res.response_cdf = cdf[::stride] + ([cdf[-1]] if cdf and len(cdf) % stride != 1 else [])
    return res


def simulate(
    workload_path: str,
    profiles: Mapping[str, ModelCost],
    policy: str,
    cap_bytes: int | str,
    workers: int = 1,
    seed: int = 0,
    proactive: str | None = None,
    placement: str = "start",
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_waiting: int = admission.DEFAULT_MAX_WAITING,
    on_served: Callable[[str, float, float], None] | None = None,
) -> SimResult:
    """One run from a workload file: the entry point for the agent's replay comparison.
    ``cap_bytes`` may be a percentage string of the workload's total model bytes."""
    with CompactWorkload(workload_path) as wl:
        check_models(wl, profiles)
        cap = parse_cap(cap_bytes, workload_bytes(wl, profiles))
        return run(
            wl, profiles, policy, cap, workers, seed, proactive, placement=placement,
            deadline_s=deadline_s, max_waiting=max_waiting, on_served=on_served,
        )  # fmt: skip
