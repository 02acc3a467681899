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

Where the code is (``loadgen/sim/``): ``engine`` (the event loop: arrivals, finishes, workers,
the proactive policy), ``device`` (memory: cached entries, load completion, pins, the memory
timeline), ``placement`` (the two decision points above and the admission queue), ``results``
(``SimResult``, the response-time histogram), ``inputs`` (policy specs, caps, checks, the
oracle). This module is the entry point: ``run`` over a compacted workload, ``simulate`` from a
file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent import admission
from loadgen.profiles import ModelCost
from loadgen.sim.engine import run
from loadgen.sim.inputs import (
    DEFAULT_DEADLINE_S,
    PLACEMENTS,
    SimulationError,
    check_models,
    parse_cap,
    parse_policy_spec,
    workload_bytes,
)
from loadgen.sim.results import TIMELINE_POINTS, LogHistogram, SimResult
from loadgen.sim_workload import CompactWorkload

__all__ = [
    "DEFAULT_DEADLINE_S",
    "PLACEMENTS",
    "TIMELINE_POINTS",
    "LogHistogram",
    "SimResult",
    "SimulationError",
    "check_models",
    "parse_cap",
    "parse_policy_spec",
    "run",
    "simulate",
    "workload_bytes",
]


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
