"""The synthetic Azure-like workload meets each calibration target of workload.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from loadgen.profiles import SEED_PROFILES, load_profiles
from loadgen.stats import TARGETS, stats_of_chunks, within, workload_stats
from loadgen.synth import TIMER_RATES, synth_chunks, synth_functions, synth_requests
from loadgen.workload_file import iter_workload

N, HOURS = 300, 24.0


@pytest.fixture(scope="module")
def plan():
    return synth_functions(N, HOURS, seed=11)


@pytest.fixture(scope="module")
def measured(plan) -> dict[str, float]:
    return stats_of_chunks(synth_chunks(plan, HOURS, seed=11), N)


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_target_within_tolerance(measured, name: str) -> None:
    target, tol, _ = TARGETS[name]
    assert within(name, measured[name]), f"{name}: {measured[name]:.3f} vs {target} ± {tol}"


def test_timers_fire_on_fixed_periods(plan) -> None:
    timers = [i for i, f in enumerate(plan) if f.timer and f.rate_per_day > 1]
    assert timers and all(plan[i].rate_per_day in TIMER_RATES for i in timers)
    want = set(timers)
    seen: dict[int, list[float]] = {i: [] for i in timers}
    for times, funcs in synth_chunks(plan, HOURS, seed=11):
        for t, i in zip(times.tolist(), funcs.tolist()):
            if i in want:
                seen[i].append(t)
    for i in timers:
        gaps = np.diff(seen[i])
        assert np.allclose(gaps, 86400.0 / plan[i].rate_per_day)


def test_stream_is_sorted_counts_exact_and_deterministic(plan) -> None:
    last, total = -math.inf, 0
    counts = np.zeros(N, dtype=np.int64)
    for times, funcs in synth_chunks(plan, HOURS, seed=11):
        assert times[0] >= last and np.all(np.diff(times) >= 0)
        last = times[-1]
        total += len(times)
        np.add.at(counts, funcs, 1)
    assert last < HOURS * 3600
    for i, f in enumerate(plan):
        if not f.timer:  # timers: count depends on the phase, within one period
            assert counts[i] == f.count
    again = synth_functions(N, HOURS, seed=11)
    assert again == plan and synth_functions(N, HOURS, seed=12) != plan


def test_paired_synth_and_cli_round_trip(tmp_path: Path) -> None:
    costs = load_profiles(SEED_PROFILES)
    out = tmp_path / "s.csv"
    res = CliRunner().invoke(
        main,
        ["trace", "synth", "--functions", "40", "--hours", "1", "--seed", "2", "--out", str(out),
         "--profiles", str(SEED_PROFILES), "--pairing", "quantiles"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    reqs = list(iter_workload(out))
    assert reqs and {r.function for r in reqs} <= set(costs)
    top = max({r.source for r in reqs}, key=lambda s: sum(r.source == s for r in reqs))
    dearest = max(costs, key=lambda m: costs[m].load_s)
    assert next(r.function for r in reqs if r.source == top) == dearest
    st = workload_stats(out)
    assert st["requests"] == len(reqs)
    res = CliRunner().invoke(main, ["trace", "stats", str(out)])
    assert res.exit_code == 0 and "median CV all" in res.output


def test_synth_requests_ids_unique() -> None:
    reqs = list(synth_requests(30, 0.5, seed=1))
    assert len({r.id for r in reqs}) == len(reqs)
    with pytest.raises(ValueError, match="functions must be >= 1"):
        synth_functions(0, 1, 0)
