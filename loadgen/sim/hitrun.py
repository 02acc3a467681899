"""Runs of hits processed in bulk (numpy), with the same results as one request at a time.

At a 50 % cap nearly every request is a hit (>99 % on the synthetic day), and with enough
workers nearly every hit starts the moment it arrives. For such a request the event loop only
does bookkeeping: pick the lowest-index idle worker, count the hit, schedule the finish
``arrival + exec``, add the response time to the histogram. Nothing in it is a decision: the
policy decides on misses only. So, from a point where no request is queued, ``HitRuns.advance``
takes the following requests as long as each one's model is cached and loaded and some worker
is idle when it arrives, and applies them in bulk:

- which requests qualify: a vectorised test of their models against the cache, then the finish
  times ``arrival + exec`` (elementwise, the same float operation as the loop's), and for each
  finish the arrival before which the loop would pop it (``searchsorted``);
- which worker each one takes: a short loop over the arrivals with the idle workers as a
  bitmask (lowest set bit = lowest-index idle worker, as ``least_loaded``); it stops at the first
  arrival that finds every worker busy (that one queues: the ordinary loop takes it);
- the counters, the entries' ``requests``/``last_used`` and the oracle's next arrivals are set
  to what they would be after the last of these requests; the sums (execution time, response
  time) are added in the loop's order (``np.add.accumulate`` is sequential, so the floats are
  the same); the finish events still in flight go back on the heap with the sequence numbers
  the loop would have given them.

A policy whose ``on_hit`` does something (GDSF) gets it called for every hit, in order, with
the entry as the loop would have shown it. Every decision (the next miss) therefore sees the
state it would have seen. Only start placement without a proactive policy or ``on_served``
callback takes this path (``applies``); the others would need the decision at arrival, a
policy consulted on every request, or every request reported.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from agent.policies import EvictionPolicy
from loadgen.sim.placement import StartPlacement

if TYPE_CHECKING:
    from loadgen.sim.engine import Simulation

MIN_RUN = 16  # shorter runs cost more in numpy calls than they save: the loop takes them
WINDOW = 4096  # at most this many requests examined per attempt


class HitRuns:
    """Bulk processing of hit runs for one ``Simulation`` (see the module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.exec_s = np.array([c.exec_s for c in sim.cost], dtype=np.float64)
        self.on_hit = type(sim.pol).on_hit is not EvictionPolicy.on_hit
        self.ready = np.full(sim.nm, math.inf)  # per model: load done (inf: not cached)
        self.ready_version = -1
        self.retry_at = 0  # after a short run, the loop takes a few requests before retrying
        self.backoff = 1
        self.window = MIN_RUN * 4  # requests examined per attempt

    @staticmethod
    def applies(sim: Simulation) -> bool:
        return (
            isinstance(sim.place, StartPlacement)
            and sim.place.variants is None  # (the variant rule decides every request)
            and sim.pro is None
            and sim.on_served is None
            and all(c.exec_s > 0 for c in sim.cost)  # (a finish after its own arrival)
        )

    def _ready(self) -> np.ndarray:
        dev = self.sim.dev
        if self.ready_version != dev.version:
            self.ready.fill(math.inf)
            for m in dev.cached:
                self.ready[m] = dev.ready_at[m]
            self.ready_version = dev.version
        return self.ready

    def advance(self, times: np.ndarray, funcs: np.ndarray, nexts: list | None, i: int) -> int:
        """Process requests ``i``, ``i + 1``… of this chunk as a hit run if they qualify; the
        index of the first request left to the loop (``i``: none taken)."""
        sim = self.sim
        if i < self.retry_at:
            return i
        if sum(sim.outstanding) != len(sim.events):  # something queued: the loop serves it
            return self._later(i)
        a = times[i : i + self.window]
        f = funcs[i : i + self.window]
        late = self._ready()[f] > a  # not cached, or still loading: the loop decides
        n = int(late.argmax()) if late.any() else len(a)
        if n >= MIN_RUN:
            a, f = a[:n], f[:n]
            fin = a + self.exec_s[f]
            n = self._assign(a, fin)
        self.window = min(WINDOW, max(MIN_RUN * 4, 2 * n))  # about the runs seen lately
        if n < MIN_RUN:
            return self._later(i)
        self.backoff = 1
        self._apply(a[:n], f[:n], fin[:n], nexts, i)
        return i + n

    def _later(self, i: int) -> int:
        """No run here: let the loop take the next few requests (more after each failure)."""
        self.retry_at = i + self.backoff
        self.backoff = min(self.backoff * 2, 64)
        return i

    def _assign(self, a: np.ndarray, fin: np.ndarray) -> int:
        """Workers for the run's requests (lowest-index idle worker at each arrival); how many
        qualify (the first that finds every worker busy ends the run)."""
        sim = self.sim
        events = sim.events
        n = len(a)
        # the loop pops a finish before the first arrival at or after it
        pop_new = np.searchsorted(a, fin, side="left").tolist()
        pop_old = np.searchsorted(a, [ev[0] for ev in events], side="left").tolist()
        mask = (1 << sim.workers) - 1
        frees: defaultdict[int, list[int]] = defaultdict(list)
        for ev, j in zip(events, pop_old):
            mask ^= 1 << ev[2]
            frees[j].append(ev[2])
        worker = [0] * n
        for j in range(n):
            if j in frees:
                for w in frees.pop(j):
                    mask |= 1 << w
            if not mask:
                n = j
                break
            low = mask & -mask
            mask ^= low
            w = low.bit_length() - 1
            worker[j] = w
            frees[pop_new[j]].append(w)
        self.worker, self.pop_new, self.pop_old = worker[:n], pop_new[:n], pop_old
        return n

    def _apply(
        self, a: np.ndarray, f: np.ndarray, fin: np.ndarray, nexts: list | None, i: int
    ) -> None:
        """The state after the run's ``n`` requests, as the loop would have left it."""
        sim, n = self.sim, len(a)
        dev, res = sim.dev, sim.res
        cached, pins, outstanding = dev.cached, dev.pins, sim.outstanding
        # finish events: the older ones popped during the run, the run's own still in flight
        kept = []
        for ev, j in zip(sim.events, self.pop_old):
            if j < n:
                pins[ev[3]] -= 1
                outstanding[ev[2]] -= 1
            else:
                kept.append(ev)
        seq0 = sim.seq + 1
        fl = fin.tolist()
        fs = f.tolist()
        for j, w in enumerate(self.worker):
            sim.busy_until[w] = fl[j]
            if self.pop_new[j] >= n:  # still executing after the run
                kept.append((fl[j], seq0 + j, w, fs[j]))
                pins[fs[j]] += 1
                outstanding[w] += 1
        heapq.heapify(kept)
        sim.events[:] = kept
        sim.seq += n
        # trace counters and the entries as the loop leaves them
        sim.total += n
        res.hits += n
        requests = sim.requests
        if self.on_hit:
            al = a.tolist()
            for j, m in enumerate(fs):
                requests[m] += 1
                e = cached[m]
                e.requests = requests[m]
                e.last_used = al[j]
                sim.pol.on_hit(e, al[j])
        else:
            counts = np.bincount(f, minlength=sim.nm)
            last = np.full(sim.nm, -1)
            last[f] = np.arange(n)  # (the last write wins: each model's last request)
            for m in np.flatnonzero(counts).tolist():
                requests[m] += int(counts[m])
                e = cached[m]
                e.requests = requests[m]
                e.last_used = float(a[last[m]])
        if nexts is not None:
            for j, m in enumerate(fs):
                sim.next_arrival[m] = nexts[i + j]
        # sums in the loop's order (accumulate is sequential: the same floats)
        ex = self.exec_s[f]
        res.total_exec_s = float(np.add.accumulate(np.concatenate(([res.total_exec_s], ex)))[-1])
        resp = fin - a
        sim.resp_sum = float(np.add.accumulate(np.concatenate(([sim.resp_sum], resp)))[-1])
        sim.hist.add_many(resp)
