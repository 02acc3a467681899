"""Each pipeline step on the real 2019 rows and on 2021 rows written here; pairing; profiles."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.cli import main
from loadgen.azure import read_invocations_2019
from loadgen.pairing import pair
from loadgen.pipeline import PipelineOptions, build_workload, label
from loadgen.pipeline_spool import TimeSpool
from loadgen.profiles import SEED_PROFILES, ModelCost, ProfileError, load_profiles
from loadgen.stats import workload_stats
from loadgen.workload_file import iter_workload

REAL = (
    Path(__file__).resolve().parents[1]
    / "loadgen"
    / "data"
    / "azure2019_invocations_first9rows.csv"
)
ROWS = list(read_invocations_2019(REAL))
HTTP = {label((r.app, r.function)): sum(r.counts) for r in ROWS if r.trigger == "http"}
ALL = {label((r.app, r.function)): sum(r.counts) for r in ROWS}


def run(tmp_path: Path, files=(REAL,), pairing=None, **kw) -> tuple[list, object]:
    out = tmp_path / "w.csv"
    report = build_workload(list(files), out, PipelineOptions(progress=False, **kw), pairing)
    reqs = list(iter_workload(out))
    assert report.requests == len(reqs)
    return reqs, report


def per_source(reqs) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reqs:
        out[r.source] = out.get(r.source, 0) + 1
    return out


def test_trigger_filter(tmp_path: Path) -> None:
    reqs, rep = run(tmp_path)
    assert per_source(reqs) == HTTP and rep.requests == 1048
    reqs, _ = run(tmp_path, triggers="all")
    assert per_source(reqs) == ALL and len(reqs) == 1061


def test_even_spreading_and_window(tmp_path: Path) -> None:
    row = ROWS[0]
    first = next(m for m, c in enumerate(row.counts) if c)
    reqs, _ = run(tmp_path, start_minute=first, minutes=1, triggers="all", spread="aligned")
    mine = [r.time for r in reqs if r.source == label((row.app, row.function))]
    c = row.counts[first]
    assert mine == [j * 60.0 / c for j in range(c)]
    expect = sum(r.counts[first] for r in ROWS)
    assert len(reqs) == expect and all(0 <= r.time < 60 for r in reqs)
    reqs, _ = run(tmp_path, start_minute=first, minutes=1, triggers="all")  # even: the seed's
    assert [r.time for r in reqs] == [k * 60.0 / expect for k in range(expect)]


def test_poisson_spreading_keeps_minutes_and_counts(tmp_path: Path) -> None:
    even, _ = run(tmp_path, spread="even", triggers="all")
    poisson, _ = run(tmp_path, spread="poisson", triggers="all", seed=3)
    assert per_source(even) == per_source(poisson)
    minute = lambda reqs: sorted((r.source, int(r.time // 60)) for r in reqs)  # noqa: E731
    assert minute(even) == minute(poisson)
    assert [r.time for r in even] != [r.time for r in poisson]


def test_early_stops(tmp_path: Path) -> None:
    reqs, rep = run(tmp_path, max_functions=2)
    assert set(per_source(reqs)) == set(list(HTTP)[:2]) and rep.functions_seen == 2
    reqs, rep = run(tmp_path, max_invocations=300)  # first http row has 288, second crosses
    assert rep.rows == 2 and len(reqs) == 288 * 2


def test_quantile_and_one_hit_filters(tmp_path: Path, monkeypatch) -> None:
    reqs, _ = run(tmp_path, min_quantile=0.5)
    vals = sorted(HTTP.values())
    cut = float(np.quantile(vals, 0.5))
    assert per_source(reqs) == {k: v for k, v in HTTP.items() if v >= cut}
    reqs, _ = run(tmp_path, max_quantile=0.5)
    assert per_source(reqs) == {k: v for k, v in HTTP.items() if v <= cut}
    lines = REAL.read_text().splitlines()
    one = lines[1].split(",")
    one[4:] = ["1"] + ["0"] * 1439
    p = tmp_path / "d.csv"
    p.write_text("\n".join([lines[0], ",".join(one), lines[2]]) + "\n")
    reqs, _ = run(tmp_path, files=[p])
    assert len(per_source(reqs)) == 2
    reqs, _ = run(tmp_path, files=[p], drop_one_hit=True)
    assert len(per_source(reqs)) == 1


def test_downsample_and_speedup(tmp_path: Path) -> None:
    base, _ = run(tmp_path, triggers="all")
    down, _ = run(tmp_path, triggers="all", downsample=4, seed=1)
    assert 1061 / 4 * 0.75 < len(down) < 1061 / 4 * 1.25
    fast, _ = run(tmp_path, triggers="all", speedup=60)
    assert [r.time for r in fast] == pytest.approx([r.time / 60 for r in base])


def test_days_are_concatenated(tmp_path: Path) -> None:
    reqs, _ = run(tmp_path, files=[REAL, REAL])
    assert len(reqs) == 2 * 1048
    assert sum(r.time >= 86400 for r in reqs) == 1048
    reqs, _ = run(tmp_path, files=[REAL, REAL], start_minute=1440, minutes=1440)
    assert len(reqs) == 1048 and 0 <= reqs[0].time and reqs[-1].time < 86400


def _write_2021(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["app", "func", "end_timestamp", "duration"])
        w.writerows(rows)
    return path


def test_2021_unsorted_rows_come_out_sorted_exactly(tmp_path: Path) -> None:
    rnd = random.Random(7)
    rows = []
    for _ in range(3000):
        start = rnd.uniform(0, 7200)
        dur = rnd.choice([0.0, rnd.uniform(0, 30)])
        rows.append((rnd.choice("AB"), rnd.choice("xyz"), f"{start + dur:.6f}", f"{dur:.6f}"))
    p = _write_2021(tmp_path / "t.txt", rows)
    opts = dict(trace_format="2021", triggers="all", bucket_s=300.0)
    reqs, rep = run(tmp_path, files=[p], **opts)
    assert len(reqs) == 3000 and rep.functions_kept == 6  # (app, func) pairs: x in A != x in B
    expect = sorted(float(e) - float(d) for _, _, e, d in rows)
    assert [r.time for r in reqs] == pytest.approx(expect, abs=1e-6)
    reqs, _ = run(tmp_path, files=[p], minutes=60, **opts)
    assert len(reqs) == sum(1 for e in expect if e < 3600)


def test_spool_is_exact_with_tiny_buffers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = rng.random(5000) * 1000
    with TimeSpool(bucket_s=7.0, buffer=100, tmpdir=tmp_path) as spool:
        for lo in range(0, 5000, 333):
            spool.add(t[lo : lo + 333], np.arange(lo, min(lo + 333, 5000), dtype=np.int32))
        got = np.concatenate([c[0] for c in spool.sorted_chunks()])
    assert np.array_equal(got, np.sort(t))


def test_pairing_methods() -> None:
    totals = {"a": 100, "b": 50, "c": 10, "d": 1}
    costs = {
        "cheap": ModelCost(1.0, 1.0, 10, 0.0),
        "mid": ModelCost(2.0, 0.1, 10, 0.0),
        "dear": ModelCost(3.0, 3.0, 10, 0.0),
    }
    models = ["cheap", "mid", "dear"]
    assert pair(totals, models, "round_robin") == {
        "a": "cheap",
        "b": "mid",
        "c": "dear",
        "d": "cheap",
    }
    q = pair(totals, models, "quantiles", profiles=costs)
    assert q["a"] == "dear" and q["d"] == "cheap"
    r = pair(totals, models, "quantiles", profiles=costs, reverse=True)
    assert r["a"] == "cheap" and r["d"] == "dear"
    ratio = pair(totals, models, "quantiles", profiles=costs, cost="load/exec")
    assert ratio["a"] == "mid"  # 2.0/0.1 is the highest load/exec
    many = {f"f{i}": 1 for i in range(2000)}
    w = pair(many, models, "random", weights=[0, 1, 3], seed=1)
    picks = list(w.values())
    assert "cheap" not in picks and 0.7 < picks.count("dear") / 2000 < 0.8
    with pytest.raises(ValueError, match="needs a profile"):
        pair(totals, models, "quantiles")
    with pytest.raises(ValueError, match="unknown pairing"):
        pair(totals, models, "zigzag")


def test_profiles_loader_reads_both_formats(tmp_path: Path) -> None:
    seed = load_profiles(SEED_PROFILES)
    assert len(seed) == 26 and all(c.bytes is None for c in seed.values())
    assert all(2.0 < c.load_s < 20 and 0.1 < c.exec_s < 4 for c in seed.values())
    sized = load_profiles(SEED_PROFILES, sizes={"DenseNet121": 33_000_000}, default_bytes=1)
    assert sized["DenseNet121"].bytes == 33_000_000 and sized["VGG16"].bytes == 1
    with pytest.raises(ProfileError, match="has no size"):
        load_profiles(SEED_PROFILES, require_bytes=True)
    own = tmp_path / "p.json"
    rec = {"name": "tiny", "avg_load_latency": 0.01, "avg_exec_latency": 0.002,
           "avg_unload_latency": 0.0001, "loaded_size": 123456}  # fmt: skip
    own.write_text(json.dumps({"version": 1, "models": [rec]}))
    assert load_profiles(own) == {"tiny": ModelCost(0.01, 0.002, 123456, 0.0001)}
    own.write_text("{not json")
    with pytest.raises(ProfileError, match=r"p.json:1: not JSON"):
        load_profiles(own)


def test_pairing_in_the_pipeline_and_cli(tmp_path: Path) -> None:
    out = tmp_path / "w.csv.gz"
    res = CliRunner().invoke(
        main,
        ["trace", "workload", str(REAL), "--out", str(out), "--profiles", str(SEED_PROFILES),
         "--models", "VGG16,MobileNet", "--pairing", "quantiles", "--speedup", "10"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    reqs = list(iter_workload(out))
    top = max(HTTP, key=HTTP.get)
    by_source = {r.source: r.function for r in reqs}
    assert by_source[top] == "VGG16"  # the most popular function gets the dearer load
    assert set(by_source.values()) == {"VGG16", "MobileNet"}
    assert reqs[-1].time < 8640.0


def test_cli_bad_rows(tmp_path: Path) -> None:
    lines = REAL.read_text().splitlines()
    p = tmp_path / "bad.csv"
    p.write_text("\n".join([lines[0], lines[1], "x,y,z"]) + "\n")
    out = str(tmp_path / "w.csv")
    res = CliRunner().invoke(main, ["trace", "workload", str(p), "--out", out])
    assert res.exit_code != 0 and "bad.csv:3: expected 1444 columns, got 3" in res.output
    res = CliRunner().invoke(main, ["trace", "workload", str(p), "--out", out, "--skip-bad-rows"])
    assert res.exit_code == 0 and "skipped 1 bad rows" in res.output
    res = CliRunner().invoke(
        main, ["trace", "workload", str(p), "--out", out, "--models", "x", "--pairing", "quantiles"]
    )
    assert res.exit_code != 0 and "needs --profiles" in res.output


def test_stats_on_the_real_rows(tmp_path: Path) -> None:
    reqs, _ = run(tmp_path)
    st = workload_stats(tmp_path / "w.csv")
    assert st["requests"] == 1048 and st["functions"] == 7
    vals = sorted(HTTP.values())
    assert st["cdf<= 10/day"] == pytest.approx(sum(v <= 10 for v in vals) / 7)
    assert st["top 10% share"] == pytest.approx(max(vals) / sum(vals))
    res = CliRunner().invoke(main, ["trace", "stats", str(tmp_path / "w.csv")])
    assert res.exit_code == 0 and "top 1% share" in res.output and "~0.65" in res.output


def test_cli_2021_has_no_trigger_filter(tmp_path: Path) -> None:
    p = _write_2021(tmp_path / "t.txt", [("A", "x", "5", "1"), ("A", "x", "3", "0")])
    out = str(tmp_path / "w.csv")
    res = CliRunner().invoke(main, ["trace", "workload", str(p), "--format", "2021", "--out", out])
    assert res.exit_code == 0, res.output
    assert [r.time for r in iter_workload(out)] == [3.0, 4.0]
    res = CliRunner().invoke(
        main, ["trace", "workload", str(p), "--format", "2021", "--triggers", "http", "--out", out]
    )
    assert res.exit_code != 0 and "no trigger column" in res.output
