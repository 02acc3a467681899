"""What a simulation takes in, checked before anything runs: the policy spec
(``"cremebrulee:cost=increase"``), the memory cap (``"50%"`` or a size), the workload's models
against the profiles; and ``_Oracle``, the future a Belady-like policy may look at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    """``"cremebrulee:cost=increase:size=false"`` -> (name, options); values are parsed as
    numbers or booleans where they look like one."""
    name, *opts = spec.strip().split(":")
    options: dict[str, Any] = {}
    for opt in opts:
        key, sep, raw = opt.partition("=")
        if not sep:
            raise SimulationError(f"policy option {opt!r} in {spec!r}: expected key=value")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = float(raw) if any(c in raw for c in ".e") else int(raw)
            except ValueError:
                pass
        options[key] = value
    return name, options


class _Oracle:
    """``next_use`` for oracle policies: ``now`` if a request for the model is queued, else its
    next arrival (kept current by the event loop from the workload's precomputed next uses)."""

    def __init__(self, index: Mapping[str, int], next_arrival: list[float], pending: list[int]):
        self.index, self.next_arrival, self.pending = index, next_arrival, pending

    def next_use(self, name: str, now: float) -> float:
        m = self.index[name]
        return now if self.pending[m] else self.next_arrival[m]


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
