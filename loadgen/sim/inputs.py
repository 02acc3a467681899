"""What a simulation takes in, checked before anything runs: the policy spec
(``"cremebrulee:cost=increase"``), the memory cap (``"50%"`` or a size), the workload's models
against the profiles; and ``_Oracle``, the future a Belady-like policy may look at.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from agent.policies import parse_policy_spec as policy_spec
from agent.sizes import SizeError, parse_size
from loadgen.profiles import ModelCost
from loadgen.sim_workload import CompactWorkload


class SimulationError(ValueError):
    """Input the simulator cannot run on; the message names the problem."""


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

    The event loop feeds it: ``arrive`` with every request (the bulk hit path sets
    ``next_arrival`` directly: its requests start at once), ``ref`` before a decision at the
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
