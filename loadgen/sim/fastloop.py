"""The event loop compiled (numba) for start placement: every request's bookkeeping in machine
code, every decision in the policy's Python code, with the same results as ``Simulation.run``.

Why: at a 50 % cap over 99 % of the requests are hits, and with requests queued (32 workers
on the synthetic day queue two thirds of the time) the bulk hit path (``loadgen.sim.hitrun``)
does not apply, so the Python loop served them at ~3 µs each (docs/simulation.md, "Simulator
speed"). What a hit does is fixed arithmetic — pick the least-loaded worker, queue, pop the
earliest finish, count, schedule ``t + exec``, bin the response time — so ``_loop`` does it
over flat arrays; it returns to Python at each request whose model is not cached (a miss),
where ``StartPlacement.serve`` — the one implementation, the same the loop calls — asks the
policy, evicts and loads exactly as in the Python loop, then ``_loop`` resumes.

The state lives in arrays while the loop runs and is copied to the ``Simulation``'s Python
objects (counters, entries' ``requests``/``last_used``, pins, finish event) around each miss,
so the policy sees what it would have seen. Floats: the same operations in the same order as
the Python loop (sums are sequential; ``math.log`` is the C library's ``log`` both ways), so
the results are identical (tests/test_simulator.py checks every ``SimResult`` field).

Each worker has at most one finish in flight, so the event heap is one slot per worker
(``ev_t``, ``ev_seq``: popped by the smallest (time, sequence), as ``heapq`` orders them); the
worker queues are ring buffers, grown (``_grow``) when one fills. Applies (``applies``) to
start placement without a proactive policy, ``on_served``, an oracle, an ``on_hit`` hook
(GDSF) or variants: those need Python at every request.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from agent.policies import EvictionPolicy
from loadgen.sim.placement import StartPlacement

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the Python loop still works
    njit = None

if TYPE_CHECKING:
    from loadgen.sim.engine import Simulation

# indices into the integer and float scalars
SEQ, TOTAL, HITS, LOAD_WAITS, HIST_N = range(5)
EXEC_S, LOAD_DELAY_S, RESP_SUM = range(3)
# what _loop returns for: the chunk is done, a miss for Python, a full queue
DONE, MISS, FULL = range(3)


def _loop(times, funcs, i, drain, busy, ev_t, ev_seq, ev_m, out, qh, qn, qa, qm,
          ready, exe, pins, reqs, pend, last, si, sf, hist, lo, loglo, scale, nbins):  # fmt: skip
    """Requests ``i``… of the chunk (``drain``: no arrivals, every finish). Returns (code, next
    request, worker, arrival, model, now); on MISS the request has left its queue."""
    nw = len(busy)
    cap = qa.shape[1]
    n = 0 if drain else len(times)
    while True:
        limit = math.inf if drain or i >= n else times[i]
        if not drain and i >= n:
            return DONE, i, 0, 0.0, 0, 0.0
        # finish every execution ending at or before the next arrival, earliest first
        while True:
            w = -1
            for k in range(nw):
                if (
                    ev_t[k] <= limit
                    and ev_t[k] < math.inf
                    and (
                        w < 0 or ev_t[k] < ev_t[w] or (ev_t[k] == ev_t[w] and ev_seq[k] < ev_seq[w])
                    )
                ):
                    w = k
            if w < 0:
                break
            tf = ev_t[w]
            ev_t[w] = math.inf
            pins[ev_m[w]] -= 1
            out[w] -= 1
            if busy[w] <= tf and qn[w] > 0:
                code, arrival, m = _start(w, tf, busy, ev_t, ev_seq, ev_m, qh, qn, qa, qm, ready,
                                          exe, pins, pend, last, si, sf, hist, lo, loglo, scale,
                                          nbins)  # fmt: skip
                if code == MISS:
                    return MISS, i, w, arrival, m, tf
        if drain:
            return DONE, i, 0, 0.0, 0, 0.0
        # the arrival: the least-loaded worker (ties: the lowest index) queues it
        t = times[i]
        m = funcs[i]
        w = 0
        for k in range(1, nw):
            if out[k] < out[w]:
                w = k
        if qn[w] == cap:
            return FULL, i, w, 0.0, 0, t
        si[TOTAL] += 1
        reqs[m] += 1
        pend[m] += 1
        tail = (qh[w] + qn[w]) % cap
        qa[w, tail] = t
        qm[w, tail] = m
        qn[w] += 1
        out[w] += 1
        i += 1
        if busy[w] <= t and out[w] == 1:
            code, arrival, m = _start(w, t, busy, ev_t, ev_seq, ev_m, qh, qn, qa, qm, ready,
                                      exe, pins, pend, last, si, sf, hist, lo, loglo, scale,
                                      nbins)  # fmt: skip
            if code == MISS:
                return MISS, i, w, arrival, m, t


def _start(w, now, busy, ev_t, ev_seq, ev_m, qh, qn, qa, qm, ready, exe, pins, pend, last,
           si, sf, hist, lo, loglo, scale, nbins):  # fmt: skip
    """Worker ``w`` starts the head of its queue: a hit or a wait for a load; a miss goes back
    to Python (``StartPlacement.serve``)."""
    cap = qa.shape[1]
    arrival = qa[w, qh[w]]
    m = qm[w, qh[w]]
    qh[w] = (qh[w] + 1) % cap
    qn[w] -= 1
    if ready[m] == math.inf:
        return MISS, arrival, m
    pend[m] -= 1
    last[m] = now
    t = now
    if ready[m] <= now:
        si[HITS] += 1
    else:
        si[LOAD_WAITS] += 1
        sf[LOAD_DELAY_S] += ready[m] - now
        t = ready[m]
    pins[m] += 1
    # execute: the finish event, the sums, the response time's bin (LogHistogram.add)
    x = exe[m]
    sf[EXEC_S] += x
    busy[w] = t + x
    si[SEQ] += 1
    ev_t[w] = t + x
    ev_seq[w] = si[SEQ]
    ev_m[w] = m
    r = t + x - arrival
    b = 0 if r <= lo else min(nbins, 1 + int((math.log(r) - loglo) * scale))
    hist[b] += 1
    si[HIST_N] += 1
    sf[RESP_SUM] += r
    return DONE, arrival, m


if njit is not None:
    _start = njit(cache=True)(_start)
    _loop = njit(cache=True)(_loop)


class FastLoop:
    """``Simulation.run`` for start placement with ``_loop`` (see the module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        nw, nm = sim.workers, sim.nm
        self.busy = np.array(sim.busy_until, dtype=np.float64)
        self.ev_t = np.full(nw, math.inf)
        self.ev_seq = np.zeros(nw, dtype=np.int64)
        self.ev_m = np.zeros(nw, dtype=np.int64)
        self.out = np.zeros(nw, dtype=np.int64)
        self.qh = np.zeros(nw, dtype=np.int64)
        self.qn = np.zeros(nw, dtype=np.int64)
        self.qa = np.zeros((nw, 256))
        self.qm = np.zeros((nw, 256), dtype=np.int64)
        self.ready = np.full(nm, math.inf)
        self.exe = np.array([c.exec_s for c in sim.cost], dtype=np.float64)
        self.pins = np.zeros(nm, dtype=np.int64)
        self.reqs = np.zeros(nm, dtype=np.int64)
        self.pend = np.zeros(nm, dtype=np.int64)
        self.last = np.zeros(nm)
        self.si = np.zeros(5, dtype=np.int64)
        self.sf = np.zeros(3)
        self.hist = np.zeros(len(sim.hist.counts), dtype=np.int64)
        self.from_python()

    @staticmethod
    def applies(sim: Simulation) -> bool:
        return (
            njit is not None
            and isinstance(sim.place, StartPlacement)
            and sim.place.variants is None  # (the variant rule decides every request)
            and sim.pro is None
            and sim.on_served is None
            and not sim.pol.needs_oracle
            and type(sim.pol).on_hit is EvictionPolicy.on_hit
        )

    def run(self, progress) -> None:
        """Every chunk, then the finishes after the last arrival."""
        for tarr, _, _, _, farr in self.sim.workload.chunks():
            # (writable copies: a read-only array would be a second type to compile for)
            self._chunk(np.array(tarr, dtype=np.float64), farr.astype(np.int64), False)
            if progress is not None:
                progress(len(tarr))
        self._chunk(np.zeros(0), np.zeros(0, dtype=np.int64), True)
        self.to_python()
        h = self.sim.hist
        for b in np.flatnonzero(self.hist).tolist():
            h.counts[b] += int(self.hist[b])
        h.n += int(self.si[HIST_N])

    def _chunk(self, times: np.ndarray, funcs: np.ndarray, drain: bool) -> None:
        h = self.sim.hist
        i = 0
        while True:
            code, i, w, arrival, m, now = _loop(
                times, funcs, i, drain, self.busy, self.ev_t, self.ev_seq, self.ev_m, self.out,
                self.qh, self.qn, self.qa, self.qm, self.ready, self.exe, self.pins, self.reqs,
                self.pend, self.last, self.si, self.sf, self.hist, h.lo, h._loglo, h._scale,
                h.nbins,
            )  # fmt: skip
            if code == DONE:
                return
            if code == FULL:
                self._grow()
            else:
                self._miss(w, arrival, m, now)

    def _grow(self) -> None:
        """Double the queues' capacity, each queue unrolled to start at 0."""
        cap = self.qa.shape[1]
        idx = (self.qh[:, None] + np.arange(cap)[None, :]) % cap
        rows = np.arange(len(self.qh))[:, None]
        qa, qm = np.zeros((len(self.qh), 2 * cap)), np.zeros((len(self.qh), 2 * cap), np.int64)
        qa[:, :cap], qm[:, :cap] = self.qa[rows, idx], self.qm[rows, idx]
        self.qa, self.qm = qa, qm
        self.qh[:] = 0

    def _miss(self, w: int, arrival: float, m: int, now: float) -> None:
        """``StartPlacement.serve`` decides with the Python state brought up to date; a rejected
        request lets the worker start its next one (at the next ``_loop`` it would not)."""
        sim = self.sim
        self.to_python()
        while not sim.place.serve(w, arrival, m, now):
            self.from_python()
            if not self.qn[w]:
                return
            cap = self.qa.shape[1]
            arrival, m = float(self.qa[w, self.qh[w]]), int(self.qm[w, self.qh[w]])
            self.qh[w] = (self.qh[w] + 1) % cap
            self.qn[w] -= 1
            self.to_python()
        if sim.events:  # the request's finish event, now the loop's
            (t, seq, ew, em) = sim.events.pop()
            self.ev_t[ew], self.ev_seq[ew], self.ev_m[ew] = t, seq, em
        self.from_python()

    def to_python(self) -> None:
        """The loop's state into the ``Simulation``'s objects (what ``serve`` and the policy
        read)."""
        sim, res, dev = self.sim, self.sim.res, self.sim.dev
        sim.seq, sim.total, res.hits, res.load_waits = self.si[:4].tolist()
        res.total_exec_s, res.total_load_delay_s, sim.resp_sum = self.sf.tolist()
        sim.busy_until[:] = self.busy.tolist()
        sim.outstanding[:] = self.out.tolist()
        sim.requests[:] = self.reqs.tolist()
        sim.pending[:] = self.pend.tolist()
        dev.pins[:] = self.pins.tolist()
        last = self.last.tolist()
        for m, e in dev.cached.items():
            e.requests = sim.requests[m]
            e.last_used = last[m]

    def from_python(self) -> None:
        """The ``Simulation``'s objects into the loop's state (after ``serve``)."""
        sim, res, dev = self.sim, self.sim.res, self.sim.dev
        self.si[:4] = (sim.seq, sim.total, res.hits, res.load_waits)
        self.sf[:] = (res.total_exec_s, res.total_load_delay_s, sim.resp_sum)
        self.busy[:] = sim.busy_until
        self.out[:] = sim.outstanding
        self.reqs[:] = sim.requests
        self.pend[:] = sim.pending
        self.pins[:] = dev.pins
        self.ready.fill(math.inf)
        for m, e in dev.cached.items():
            self.ready[m] = dev.ready_at[m]
            self.last[m] = e.last_used
