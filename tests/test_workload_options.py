"""The seed's workload options in ``brulee trace workload``, on the real 2019 rows shipped in
``loadgen/data``: even spread (the seed's), qpm, early stop by time, representative sampling,
round-robin pairing by popularity and cost, distinct models and scaled runtimes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from loadgen.azure import BUNDLED_TRACE, read_invocations_2019
from loadgen.pairing import pair
from loadgen.pipeline import PipelineOptions, build_workload, label
from loadgen.pipeline_sample import QpmSampler, representative
from loadgen.profiles import SEED_PROFILES, load_profiles
from loadgen.workload_file import iter_workload

ROWS = list(read_invocations_2019(BUNDLED_TRACE))
COUNTS = {label((r.app, r.function)): np.array(r.counts) for r in ROWS}
PER_MINUTE = np.sum(list(COUNTS.values()), axis=0)  # all triggers: 1,061 invocations


def run(tmp_path: Path, **kw):
    out = tmp_path / "w.csv"
    opts = PipelineOptions(progress=False, **{"triggers": "all", **kw})
    report = build_workload([BUNDLED_TRACE], out, opts)
    return list(iter_workload(out)), report


def cli(*args: str):
    return CliRunner().invoke(main, ["trace", "workload", str(BUNDLED_TRACE), *args])


def test_even_spreads_all_of_a_minute_over_it_like_the_seed(tmp_path: Path) -> None:
    reqs, _ = run(tmp_path)
    by_minute: dict[int, list] = {}
    for r in reqs:
        by_minute.setdefault(int(r.time // 60), []).append(r)
    assert set(by_minute) == set(np.flatnonzero(PER_MINUTE).tolist())
    for m, rs in by_minute.items():
        total = int(PER_MINUTE[m])
        # the minute's T invocations of every function sit at m*60 + k*60/T, k = 0..T-1
        assert [r.time for r in rs] == pytest.approx(
            [m * 60 + k * 60 / total for k in range(total)]
        )
        assert Counter(r.source for r in rs) == {s: c[m] for s, c in COUNTS.items() if c[m]}
    assert len({r.time for r in reqs}) == len(reqs) == 1061  # no two requests at one instant
    # the functions are dealt to the slots at random: another seed, same times, other order
    other, _ = run(tmp_path, seed=5)
    assert [r.time for r in other] == [r.time for r in reqs]
    assert [r.source for r in other] != [r.source for r in reqs]


def test_aligned_keeps_the_old_per_function_spread_and_its_bursts(tmp_path: Path) -> None:
    reqs, _ = run(tmp_path, spread="aligned")
    for s, counts in COUNTS.items():
        mine = [r.time for r in reqs if r.source == s]
        expect = [m * 60 + j * 60 / c for m, c in enumerate(counts.tolist()) for j in range(c)]
        assert mine == pytest.approx(expect)
    at_start = Counter(r.time for r in reqs if r.time % 60 == 0)
    assert max(at_start.values()) >= 3  # several functions fire at one minute's first instant
    even, _ = run(tmp_path)
    assert max(Counter(r.time for r in even).values()) == 1


def on_full_minute_slots(reqs) -> bool:
    """Each request on a slot k·60/T of its minute's full count T (all nine functions)."""
    ks = [(r.time - (r.time // 60) * 60) * PER_MINUTE[int(r.time // 60)] / 60 for r in reqs]
    return all(abs(k - round(k)) < 1e-6 for k in ks)


def test_even_spreads_before_filters_and_downsampling_like_the_seed(tmp_path: Path) -> None:
    reqs, _ = run(tmp_path, downsample=3, seed=2)
    assert 1061 / 3 * 0.8 < len(reqs) < 1061 / 3 * 1.2
    assert on_full_minute_slots(reqs)  # slots of the minute's full count, not of what is left
    http, rep = run(tmp_path, triggers="http")  # the trigger filter comes first: T of http only
    assert rep.requests == 1048 and not on_full_minute_slots(http)
    small, rep = run(tmp_path, min_quantile=0.5)  # the quantile filter comes after spreading
    assert rep.functions_kept < 9 and on_full_minute_slots(small)
    aligned, _ = run(tmp_path, min_quantile=0.5, spread="aligned")
    assert not on_full_minute_slots(aligned)


def test_qpm_resamples_with_replacement_to_qpm_times_minutes(tmp_path: Path) -> None:
    base, rep = run(tmp_path)
    assert rep.window_minutes == 1440
    reqs, _ = run(tmp_path, qpm=10)
    assert len(reqs) == 14400 and [r.time for r in reqs] == sorted(r.time for r in reqs)
    assert {(r.time, r.source) for r in reqs} <= {(r.time, r.source) for r in base}
    assert len({r.id for r in reqs}) == 14400
    share = Counter(r.source for r in reqs)
    top = max(COUNTS, key=lambda s: COUNTS[s].sum())
    assert share[top] / 14400 == pytest.approx(432 / 1061, abs=0.02)
    hour, rep = run(tmp_path, minutes=60, qpm=2.5)
    assert rep.window_minutes == 60 and len(hour) == 150 and hour[-1].time < 3600
    fast, _ = run(tmp_path, qpm=10, speedup=60)  # qpm counts trace minutes, before speed-up
    assert len(fast) == 14400 and fast[-1].time < 1440


def test_qpm_sampler_is_an_exact_multinomial_split() -> None:
    rng = np.random.default_rng(0)
    sampler = QpmSampler(1000, 30, rng)
    t = np.arange(30.0)
    parts = [sampler.take(t[a : a + 7], t[a : a + 7].astype(np.int32)) for a in range(0, 30, 7)]
    got = np.concatenate([p[0] for p in parts])
    assert len(got) == 1000 and np.all(np.diff(got) >= 0)
    assert 15 < np.bincount(got.astype(int)).min()  # every request drawn about 33 times


def test_stop_early_cuts_at_the_first_whole_hour_with_enough(tmp_path: Path) -> None:
    hourly = PER_MINUTE.reshape(24, 60).sum(1)  # 24, 24, 24, 24, 125, …
    assert hourly[:5].tolist() == [24, 24, 24, 24, 125]
    reqs, rep = run(tmp_path, stop_early=True, min_uniq_invocations=100)
    assert rep.stopped_early_at == 300 and rep.window_minutes == 300
    assert len(reqs) == 221 and reqs[-1].time < 300 * 60
    _, rep = run(tmp_path, stop_early=True, min_uniq_invocations=40)
    assert rep.stopped_early_at == 120  # 48 > 40 after two hours
    _, rep = run(tmp_path, stop_early=True, min_uniq_invocations=40, downsample=2)
    assert rep.stopped_early_at == 240  # the seed counts what is left after downsampling
    seen_by_hour1 = sum(1 for c in COUNTS.values() if c[:60].any())
    _, rep = run(tmp_path, stop_early=True, min_uniq_funcs=seen_by_hour1 - 1)
    assert rep.stopped_early_at == 60
    reqs, rep = run(tmp_path, stop_early=True)  # defaults 1000 / 10,000: never reached
    assert rep.stopped_early_at is None and len(reqs) == 1061
    _, rep = run(tmp_path, stop_early=True, min_uniq_invocations=100, minutes=90)
    assert rep.stopped_early_at is None and rep.window_minutes == 90  # --minutes ends first


def test_representative_draws_from_every_quantile() -> None:
    values = np.arange(100)
    picks = representative(values, 10, 1, np.random.default_rng(1))
    assert len(picks) == 10 and len(set(picks.tolist())) == 10
    cuts = np.quantile(values, np.linspace(0, 1, 11))
    assert all(((picks >= lo) & (picks <= hi)).any() for lo, hi in zip(cuts[:-1], cuts[1:]))
    assert len(representative(values, 10, 3, np.random.default_rng(1))) == 30
    assert len(representative(values, 400, 1, np.random.default_rng(1))) == 100
    with pytest.raises(ValueError, match="at least one quantile"):
        representative(values, 0, 1, np.random.default_rng(1))


def test_make_representative_on_the_real_rows(tmp_path: Path) -> None:
    totals = {s: int(c.sum()) for s, c in COUNTS.items()}  # 3 … 432
    reqs, rep = run(tmp_path, make_representative=True, num_representative_quantiles=3)
    kept = set(rep.totals)
    assert rep.functions_kept == len(kept) == 3
    ranked = sorted(totals.values())
    terciles = np.quantile(ranked, [0, 1 / 3, 2 / 3, 1])
    for lo, hi in zip(terciles[:-1], terciles[1:]):
        assert any(lo <= totals[s] <= hi for s in kept)
    assert {r.source for r in reqs} == kept
    assert len(reqs) == sum(totals[s] for s in kept)
    _, rep = run(tmp_path, make_representative=True)  # 400 quantiles, 9 functions: all kept
    assert rep.functions_kept == 9
    _, other = run(tmp_path, make_representative=True, num_representative_quantiles=3, seed=4)
    _, same = run(tmp_path, make_representative=True, num_representative_quantiles=3)
    assert set(same.totals) == kept and other.functions_kept == 3


def test_round_robin_goes_by_popularity_over_models_ranked_by_cost() -> None:
    totals = {s: int(c.sum()) for s, c in COUNTS.items()}
    costs = load_profiles(SEED_PROFILES)
    models = ["MobileNet", "NASNetLarge", "VGG16"]
    by_load = sorted(models, key=lambda m: -costs[m].load_s)
    got = pair(totals, models, "round_robin", profiles=costs)
    ranked = sorted(totals, key=lambda s: (-totals[s], s))
    assert [got[s] for s in ranked] == [by_load[i % 3] for i in range(9)]
    rev = pair(totals, models, "round_robin", profiles=costs, reverse=True)
    assert rev[ranked[0]] == by_load[-1]
    plain = pair(totals, models, "round_robin")  # no profiles: the models in the order given
    assert [plain[s] for s in ranked[:3]] == models


def test_distinct_models_and_scaled_runtime_reach_the_simulator(tmp_path: Path) -> None:
    out, mj = tmp_path / "w.csv", tmp_path / "models.json"
    res = cli("--triggers", "all", "--out", str(out), "--profiles", str(SEED_PROFILES),
              "--models", "MobileNet,VGG16", "--pairing", "round_robin", "--distinct-models",
              "--model-json", str(mj), "--scale-runtime", "0.25")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "9 models ->" in res.output
    reqs = list(iter_workload(out))
    by_source = {r.source: r.function for r in reqs}
    assert len(set(by_source.values())) == 9  # one model per trace function
    top = max(COUNTS, key=lambda s: COUNTS[s].sum())
    assert by_source[top] == "model_0"  # named by popularity rank, as in the seed
    seed = load_profiles(SEED_PROFILES)
    records = {r["name"]: r for r in json.loads(mj.read_text())}
    assert records["model_0"]["copy_of"] == "VGG16"  # the dearer load, round robin's first
    assert records["model_1"]["copy_of"] == "MobileNet"
    for rec in records.values():
        assert rec["avg_exec_latency"] == pytest.approx(seed[rec["copy_of"]].exec_s * 0.25)
        assert rec["avg_load_latency"] == seed[rec["copy_of"]].load_s
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"VGG16": 553_000_000, "MobileNet": 17_000_000}))
    loaded = load_profiles(mj, sizes=json.loads(sizes.read_text()))
    assert loaded["model_0"].bytes == 553_000_000  # sizes of the original apply to its copies
    sim = CliRunner().invoke(
        main,
        ["simulate", "--workload", str(out), "--profiles", str(mj), "--sizes", str(sizes),
         "--policies", "lru", "--memory-cap", "50%", "--out", str(tmp_path / "sim")],
    )  # fmt: skip
    assert sim.exit_code == 0, sim.output
    (run_,) = json.loads((tmp_path / "sim" / "results.json").read_text())["runs"]
    assert run_["requests"] == 1061 and run_["hits"] < 1061
    scaled = [0.25 * seed[m].exec_s for m in ("VGG16", "MobileNet")]
    assert min(scaled) <= run_["mean_exec_s"] <= max(scaled)  # the simulator ran the scaled
    plain = tmp_path / "plain.json"
    res = cli("--out", str(out), "--profiles", str(SEED_PROFILES), "--models", "MobileNet,VGG16",
              "--model-json", str(plain))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(r["name"] for r in json.loads(plain.read_text())) == ["MobileNet", "VGG16"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qpm", "0"], "'--qpm': 0.0 is not in the range x>0"),
        (["--qpm", "5", "--downsample", "2"], "do not combine it with --downsample"),
        (["--min-uniq-funcs", "3"], "--min-uniq-funcs only applies with --stop-early"),
        (["--min-uniq-invocations", "-1", "--stop-early"], "not in the range x>=0"),
        (["--num-from-each-quantile", "2"], "only applies with --make-representative"),
        (["--make-representative", "--num-representative-quantiles", "0"], "range x>=1"),
        (["--spread", "uniform"], "'uniform' is not one of 'even', 'aligned', 'poisson'"),
        (["--distinct-models"], "need --profiles"),
        (["--profiles", str(SEED_PROFILES), "--distinct-models"], "only act on --model-json"),
        (["--profiles", str(SEED_PROFILES), "--scale-runtime", "2"], "only act on --model-json"),
        (["--scale-runtime", "0"], "'--scale-runtime': 0.0 is not in the range x>0"),
        (["--model-json", "m.json"], "need --profiles"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    res = cli("--out", str(tmp_path / "w.csv"), *args)
    assert res.exit_code != 0 and message in res.output, res.output


def test_pipeline_options_check_names_the_problem() -> None:
    for kw, message in (
        ({"qpm": -1.0}, "--qpm must be > 0"),
        ({"spread": "burst"}, "spread must be one of even, aligned, poisson"),
        ({"num_from_each_quantile": 0}, "must be >= 1"),
        ({"min_uniq_funcs": -1}, "must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            PipelineOptions(**kw).check()


def test_stop_early_and_qpm_on_2021_rows(tmp_path: Path) -> None:
    """The 2021 format (rows written here: no real 2021 rows are shipped)."""
    trace = tmp_path / "t.txt"
    rows = ["app,func,end_timestamp,duration"]
    rows += [f"A,f{i % 3},{60.0 * i + 1},1" for i in range(150)]  # one a minute for 150 min
    trace.write_text("\n".join(rows) + "\n")

    def go(**kw):
        out = tmp_path / "w.csv"
        opts = PipelineOptions(progress=False, trace_format="2021", triggers="all", **kw)
        report = build_workload([trace], out, opts)
        return list(iter_workload(out)), report

    reqs, rep = go(stop_early=True, min_uniq_invocations=70)
    assert rep.stopped_early_at == 120 and len(reqs) == 120  # 60 after one hour, 120 after two
    _, rep = go(stop_early=True, min_uniq_funcs=2)
    assert rep.stopped_early_at == 60  # all three functions are invoked in the first hour
    _, rep = go(stop_early=True, min_uniq_funcs=3)
    assert rep.stopped_early_at is None  # never more than three
    reqs, rep = go(qpm=2)
    assert rep.window_minutes == 150 and len(reqs) == 300  # up to the last arrival
