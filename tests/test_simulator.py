"""The trace-driven simulator: hand-computed tiny scenarios, the CLI end to end, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from loadgen.profiles import ModelCost
from loadgen.simulator import LogHistogram, SimulationError, parse_cap, simulate
from loadgen.workload_file import Request, write_workload

# name: ModelCost(load_s, exec_s, bytes, unload_s)
PROFILES = {
    "A": ModelCost(1.0, 0.5, 100, 0.0),
    "B": ModelCost(2.0, 0.5, 100, 0.0),
    "C": ModelCost(1.0, 0.5, 100, 0.0),
    "BIG": ModelCost(1.0, 0.5, 500, 0.0),
}


def workload(tmp_path: Path, reqs: list[tuple[float, str]], name: str = "w.csv") -> str:
    path = tmp_path / name
    write_workload(path, [Request(t, f, str(i)) for i, (t, f) in enumerate(reqs)])
    return str(path)


def test_hits_misses_and_load_delay(tmp_path):
    w = workload(tmp_path, [(0, "A"), (10, "A"), (20, "B"), (30, "A")])
    r = simulate(w, PROFILES, "lru", 200)
    assert (r.requests, r.hits, r.cold_starts, r.evictions, r.rejected) == (4, 2, 2, 0, 0)
    assert r.total_load_delay_s == pytest.approx(3.0)  # A loads 1 s, B 2 s
    assert r.mean_load_delay_s == pytest.approx(0.75)
    assert r.load_delay_ratio == pytest.approx(0.75 / 0.5)
    assert r.peak_memory_bytes == 200


def test_lru_evicts_least_recent_and_belady_uses_the_future(tmp_path):
    w = workload(tmp_path, [(0, "A"), (1, "B"), (2, "C"), (3, "A"), (4, "B")])
    lru = simulate(w, PROFILES, "lru", 200)
    assert (lru.hits, lru.cold_starts, lru.evictions) == (0, 5, 3)
    belady = simulate(w, PROFILES, "belady", 200)  # at C: evicts B (next use 4 > A's 3)
    assert (belady.hits, belady.cold_starts, belady.evictions) == (1, 4, 2)


def test_oracles_rank_queued_requests_by_when_they_came(tmp_path):
    """One worker, a backlog: when C starts (t=3) A and B both have requests waiting, A's
    (0.3) before B's (0.4), and C's next (0.35) between them. The oracle ranks by when each
    next request came, as the seed's does: B goes, A and C are hits; then B reloads. (Ranking
    every queued model as needed "now" tied A and B and evicted A by name: 1 hit, 5 loads.)"""
    same = {n: ModelCost(1.0, 0.5, 100, 0.0) for n in "ABC"}
    w = workload(tmp_path, [(0, "A"), (0.1, "B"), (0.2, "C"), (0.3, "A"), (0.35, "C"), (0.4, "B")])
    for policy in ("belady", "cremebrulee-oracle"):
        r = simulate(w, same, policy, 200)
        assert (r.hits, r.cold_starts, r.evictions) == (2, 4, 2), policy
    lru = simulate(w, same, "lru", 200)
    assert (lru.hits, lru.cold_starts) == (1, 5)


def test_policy_options_and_trim_through_the_spec(tmp_path):
    """``lru`` takes the least recent first: small S (10 B), then BIG (100 B) for C; the
    shared trim evicts only BIG and S stays a hit; ``lru:trim=off`` evicts both."""
    p = {"S": ModelCost(1.0, 0.1, 10, 0.0), "BIG": ModelCost(1.0, 0.1, 100, 0.0)}
    p["C"] = ModelCost(1.0, 0.1, 100, 0.0)
    w = workload(tmp_path, [(0, "S"), (2, "BIG"), (4, "C"), (6, "S")])
    trimmed = simulate(w, p, "lru", 110)
    assert (trimmed.hits, trimmed.evictions) == (1, 1)
    untrimmed = simulate(w, p, "lru:trim=off", 110)
    assert (untrimmed.hits, untrimmed.evictions) == (0, 2)
    with pytest.raises(ValueError, match="trim must be true or false"):
        simulate(w, p, "lru:trim=maybe", 110)


def test_queueing_one_vs_two_workers(tmp_path):
    w = workload(tmp_path, [(0, "A"), (0, "A")])
    one = simulate(w, PROFILES, "lru", 200, workers=1)
    # first: load 1 + exec 0.5 -> 1.5; second waits in the FIFO, hit, finishes at 2.0
    assert (one.hits, one.cold_starts, one.load_waits) == (1, 1, 0)
    assert one.mean_response_s == pytest.approx((1.5 + 2.0) / 2)
    two = simulate(w, PROFILES, "lru", 200, workers=2)
    # second worker waits for the load already under way (not loaded twice): 1 s, done at 1.5
    assert (two.hits, two.cold_starts, two.load_waits) == (0, 1, 1)
    assert two.mean_response_s == pytest.approx(1.5)
    assert two.total_load_delay_s == pytest.approx(2.0)
    assert two.peak_memory_bytes == 100


def test_model_larger_than_cap_is_rejected(tmp_path):
    w = workload(tmp_path, [(0, "BIG"), (1, "A")])
    r = simulate(w, PROFILES, "lru", 200)
    assert (r.rejected, r.cold_starts, r.served) == (1, 1, 1)


def test_executing_models_are_pinned(tmp_path):
    profiles = {**PROFILES, "B": ModelCost(1.0, 10.0, 100, 0.0), "A": ModelCost(1.0, 1.0, 100, 0)}
    # 3 workers. B executes until 11. C at 0.5: A loading, B loading -> both pinned: rejected.
    # C at 3: A finished at 2.1; FIFO prefers B (inserted first) but B is executing -> evict A.
    w = workload(tmp_path, [(0, "B"), (0.1, "A"), (0.5, "C"), (3, "C"), (4, "B")])
    r = simulate(w, profiles, "fifo", 200, workers=3)
    assert r.rejected == 1
    assert r.evictions == 1
    assert (r.hits, r.cold_starts) == (1, 3)  # B at 4 is still cached


def test_percent_cap_and_parse_errors(tmp_path):
    assert parse_cap("50%", 400) == 200
    assert parse_cap("300", 400) == 300
    with pytest.raises(SimulationError, match="not a size"):
        parse_cap("lots", 400)
    w = workload(tmp_path, [(0, "A"), (1, "B"), (2, "A")])
    r = simulate(w, PROFILES, "lru", "50%")  # of A+B = 200 bytes -> 100: B evicts A
    assert r.cap_bytes == 100
    assert (r.hits, r.evictions) == (0, 2)


def test_deterministic_with_seed(tmp_path):
    reqs = [(i * 0.7, "ABC"[(i * 7) % 3 if i % 5 else 0]) for i in range(300)]
    w = workload(tmp_path, reqs)
    a = simulate(w, PROFILES, "random", 200, workers=2, seed=3).summary()
    b = simulate(w, PROFILES, "random", 200, workers=2, seed=3).summary()
    assert a == b and a["evictions"] > 0


def test_ttl_proactive_unloads_idle_models(tmp_path):
    w = workload(tmp_path, [(0, "A"), (100, "A")])
    r = simulate(w, PROFILES, "lru", 200, proactive="ttl:ttl_s=10")
    assert (r.cold_starts, r.proactive_unloads, r.hits) == (2, 1, 0)


def test_histogram_quantiles_within_bin_error():
    h = LogHistogram()
    for i in range(1, 1001):
        h.add(i / 100)
    assert h.quantile(0.5) == pytest.approx(5.0, rel=0.03)
    assert h.quantile(0.99) == pytest.approx(9.9, rel=0.03)


def test_unknown_model_and_policy_errors(tmp_path):
    w = workload(tmp_path, [(0, "A"), (1, "ZZZ")])
    with pytest.raises(SimulationError, match="ZZZ"):
        simulate(w, PROFILES, "lru", 200)
    w2 = workload(tmp_path, [(0, "A")], "w2.csv")
    with pytest.raises(ValueError, match="valid: .*lru"):
        simulate(w2, PROFILES, "nope", 200)


def profile_file(tmp_path: Path, sizes: bool = True) -> str:
    models = [
        {"name": n, "load_s": c.load_s, "exec_s": c.exec_s, "unload_s": c.unload_s}
        | ({"bytes": c.bytes} if sizes else {})
        for n, c in PROFILES.items()
    ]
    path = tmp_path / ("p.json" if sizes else "p-nosize.json")
    path.write_text(json.dumps({"models": models}))
    return str(path)


def test_cli_writes_table_csv_json_and_plots(tmp_path):
    reqs = [(i * 0.9, "ABC"[i % 3] if i % 4 else "A") for i in range(60)]
    w = workload(tmp_path, reqs)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--workload",
            w,
            "--profiles",
            profile_file(tmp_path),
            "--policies",
            "lru,cremebrulee,belady",
            "--memory-cap",
            "34%,67%",
            "--workers",
            "2",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    assert "cremebrulee" in res.output and "hit_ratio" in res.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6
    assert {r["policy"] for r in rows} == {"lru", "cremebrulee", "belady"}
    assert all(int(r["requests"]) == 60 for r in rows)
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["requests"] == 60 and doc["runs"][0]["memory_timeline"]
    for png in ("sim-load-delay.png", "sim-hit-ratio.png", "sim-response-cdf.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input(tmp_path):
    w = workload(tmp_path, [(0, "A"), (1, "MISSING1")])
    run = CliRunner().invoke
    common = ["simulate", "--workload", w, "--out", str(tmp_path / "o")]
    res = run(main, [*common, "--profiles", profile_file(tmp_path), "--policies", "lru,bogus"])
    assert res.exit_code != 0 and "bogus" in res.output and "cremebrulee" in res.output
    res = run(main, [*common, "--profiles", profile_file(tmp_path)])
    assert res.exit_code != 0 and "MISSING1" in res.output
    w_ok = workload(tmp_path, [(0, "A")], "ok.csv")
    res = run(main, ["simulate", "--workload", w_ok, "--out", str(tmp_path / "o"),
                     "--profiles", profile_file(tmp_path, sizes=False)])  # fmt: skip
    assert res.exit_code != 0 and "--sizes" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("time,function,id,source\n0,A,1,\nabc,A,2,\n")
    res = run(main, ["simulate", "--workload", str(bad), "--out", str(tmp_path / "o"),
                     "--profiles", profile_file(tmp_path)])  # fmt: skip
    assert res.exit_code != 0 and "bad.csv:3" in res.output


def test_real_2019_rows_end_to_end(tmp_path):
    """The real Azure rows -> workload (quantile pairing with the seed's profile) -> simulate."""
    data = Path(__file__).parent.parent / "loadgen" / "data"
    prof = str(data / "models.m5.json")
    w = tmp_path / "azure.csv"
    res = CliRunner().invoke(
        main,
        [
            "trace",
            "workload",
            str(data / "azure2019_invocations_first9rows.csv"),
            "--triggers",
            "all",
            "--out",
            str(w),
            "--profiles",
            prof,
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    sizes = tmp_path / "sizes.json"
    models = json.loads(Path(prof).read_text())
    sizes.write_text(json.dumps({m["name"]: 10_000_000 for m in models}))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--workload",
            str(w),
            "--profiles",
            prof,
            "--sizes",
            str(sizes),
            "--policies",
            "cremebrulee,lru",
            "--memory-cap",
            "50%",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [int(r["requests"]) for r in rows] == [1061, 1061]
    assert all(0 < float(r["hit_ratio"]) < 1 for r in rows)


def test_profiles_warm_page_cache_uses_the_interpreter_open_time(tmp_path):
    """The testbed keeps model files in the page cache: its loads are the warm open time."""
    from loadgen.profiles import load_profiles

    path = tmp_path / "p.json"
    rec = {"name": "m", "avg_load_latency": 0.2, "exec_s": 0.01, "loaded_bytes": 100}
    path.write_text(json.dumps({"models": [{**rec, "warm_load_s": 0.05}]}))
    assert load_profiles(path)["m"].load_s == 0.2
    assert load_profiles(path, page_cache="warm")["m"].load_s == 0.05
    path.write_text(json.dumps({"models": [rec]}))  # no warm measurement: the load stays
    assert load_profiles(path, page_cache="warm")["m"].load_s == 0.2
    with pytest.raises(ValueError, match="page_cache"):
        load_profiles(path, page_cache="hot")


def test_arrival_placement_decides_when_the_request_arrives(tmp_path):
    """One worker, room for one model. A executes 0–1.1; B arrives at 0.5 and queues behind it.
    Deciding at start (t=1.1, A idle) evicts A and serves B; deciding at arrival, as the agent
    does, finds A pinned (executing): B waits for memory in the admission queue until A's
    execution ends at 1.1, then evicts A, loads (0.1) and runs (1.0): done at 2.2. A at 3
    evicts B; A at 3.01 is queued behind that load and finds it ready (a hit)."""
    profiles = {"A": ModelCost(0.1, 1.0, 100, 0.0), "B": ModelCost(0.1, 1.0, 100, 0.0)}
    w = workload(tmp_path, [(0, "A"), (0.5, "B"), (3, "A"), (3.01, "A")])
    at_start = simulate(w, profiles, "lru", 100, placement="start")
    assert (at_start.rejected, at_start.cold_starts, at_start.evictions) == (0, 3, 2)
    at_arrival = simulate(w, profiles, "lru", 100, placement="arrival")
    assert (at_arrival.rejected, at_arrival.cold_starts, at_arrival.evictions) == (0, 3, 2)
    assert (at_arrival.hits, at_arrival.load_waits) == (1, 0)
    assert (at_arrival.admitted_after_wait, at_arrival.timed_out) == (1, 0)
    assert at_arrival.total_admission_wait_s == pytest.approx(0.6)
    # responses: A 1.1, B 2.2 - 0.5 = 1.7 (its wait included), A 3 -> 4.1, A 3.01 -> 5.1
    assert at_arrival.mean_response_s == pytest.approx((1.1 + 1.7 + 1.1 + 2.09) / 4)
    with pytest.raises(SimulationError, match="placement"):
        simulate(w, profiles, "lru", 100, placement="sideways")


# Admission (arrival placement): agent.admission's rule. Two models X, Y (100 bytes each,
# load 1 s, exec 1 s) that cannot share a 100-byte cap; timings worked out in each docstring.
ONE_AT_A_TIME = {"X": ModelCost(1.0, 1.0, 100, 0.0), "Y": ModelCost(1.0, 1.0, 100, 0.0)}


def served_order(path: str, profiles: dict, cap: int, **kw) -> tuple:
    """The run's result and (model, arrival, finish) of every served request, by finish."""
    done: list[tuple[str, float, float]] = []
    r = simulate(
        path, profiles, "lru", cap, placement="arrival", on_served=lambda *a: done.append(a), **kw
    )
    return r, sorted(done, key=lambda d: d[2])


def test_admission_waits_for_memory_first_come_first_served(tmp_path):
    """(a) One worker. X@0 loads 0–1, runs 1–2. Y@0.1 finds X pinned: waits. X@0.2 is a hit
    (queued, which does not pin). Y@0.3: somebody waits, so it waits too. At 2 X ends: Y@0.1
    would need X's memory, but X has a request queued: X is drained (no new requests) rather
    than evicted under it; the worker runs X@0.2 (2–3), X goes, Y@0.1 is placed at 3 (loads
    3–4, runs 4–5) and Y@0.3, now a hit, with it (5–6). Nobody refused, two loads only."""
    w = workload(tmp_path, [(0, "X"), (0.1, "Y"), (0.2, "X"), (0.3, "Y")])
    r, done = served_order(w, ONE_AT_A_TIME, 100)
    assert (r.rejected, r.timed_out, r.queue_full, r.served) == (0, 0, 0, 4)
    assert [(m, a) for m, a, _ in done] == [("X", 0), ("X", 0.2), ("Y", 0.1), ("Y", 0.3)]
    assert [f for _, _, f in done] == pytest.approx([2, 3, 5, 6])
    assert (r.cold_starts, r.hits, r.evictions) == (2, 2, 1)
    # admissions: Y@0.1 and Y@0.3 at 3 (2.9 s and 2.7 s)
    assert r.admitted_after_wait == 2
    assert r.total_admission_wait_s == pytest.approx(2.9 + 2.7)
    assert r.mean_response_s == pytest.approx((2 + 2.8 + 4.9 + 5.7) / 4)
    assert r.total_load_delay_s == pytest.approx(2.0)  # load delay excludes the waits


def test_admission_a_large_model_is_not_starved_by_smaller_ones(tmp_path):
    """(b) Cap 200, two workers. S1 (100 B) loads 0–0.5, runs 0.5–2.5. L (200 B) @0.1 cannot
    fit (S1 pinned): waits. S2@0.2 and S3@0.3 would fit in the free 100 B but must queue behind
    L. At 2.5 L evicts S1 and runs 2.5–4.5; S2 and S3 wait for it, then both run 4.5–7."""
    profiles = {f"S{i}": ModelCost(0.5, 2.0, 100, 0.0) for i in (1, 2, 3)}
    profiles["L"] = ModelCost(1.0, 1.0, 200, 0.0)
    w = workload(tmp_path, [(0, "S1"), (0.1, "L"), (0.2, "S2"), (0.3, "S3")])
    r, done = served_order(w, profiles, 200, workers=2)
    finish = {m: f for m, _, f in done}
    assert finish == pytest.approx({"S1": 2.5, "L": 4.5, "S2": 7.0, "S3": 7.0})
    assert (r.admitted_after_wait, r.evictions, r.cold_starts) == (3, 2, 4)
    assert r.total_admission_wait_s == pytest.approx(2.4 + 4.3 + 4.2)


def test_admission_deadline_times_out_and_unblocks_the_next(tmp_path):
    """(c) Cap 200, two workers. X (exec 10) runs 1–11. L (200 B) @1 waits; S (100 B, would
    fit) @2 waits behind it. L's deadline (5 s) passes at 6: it leaves (timed out) and S is
    placed at once: loads 6–7, runs 7–8. With the default 60 s deadline L waits until 11."""
    profiles = {"X": ModelCost(1.0, 10.0, 100, 0.0), "L": ModelCost(1.0, 1.0, 200, 0.0),
                "S": ModelCost(1.0, 1.0, 100, 0.0)}  # fmt: skip
    w = workload(tmp_path, [(0, "X"), (1, "L"), (2, "S")])
    r, done = served_order(w, profiles, 200, workers=2, deadline_s=5)
    assert (r.timed_out, r.admitted_after_wait, r.served) == (1, 1, 2)
    assert [(m, f) for m, _, f in done] == [("S", pytest.approx(8.0)), ("X", 11.0)]
    assert r.total_admission_wait_s == pytest.approx(4.0)
    r60, done60 = served_order(w, profiles, 200, workers=2)
    assert (r60.timed_out, r60.admitted_after_wait, r60.served) == (0, 2, 3)
    assert [m for m, _, _ in done60] == ["X", "L", "S"]  # L 11–13; S after it, 13–15
    r_inf, _ = served_order(w, profiles, 200, workers=2, deadline_s=math.inf)
    assert r_inf.summary() == r60.summary()
    with pytest.raises(SimulationError, match="deadline"):
        simulate(w, profiles, "lru", 200, placement="arrival", deadline_s=0)


def test_admission_bound_refuses_one_more(tmp_path):
    """(d) max_waiting=1 (one model may wait): X runs 0–2; Y@0.5 waits; Y@0.55 rides along
    (the same load serves it); Z@0.6 finds the queue full (429); at 2 Y@0.5 is placed (a
    load), Y@0.55 behind it (a hit). A model larger than the cap is still rejected outright."""
    profiles = {**ONE_AT_A_TIME, "Z": ModelCost(1.0, 1.0, 100, 0.0),
                "BIG": ModelCost(1.0, 1.0, 500, 0.0)}  # fmt: skip
    w = workload(tmp_path, [(0, "X"), (0.5, "Y"), (0.55, "Y"), (0.6, "Z"), (0.7, "BIG")])
    r, done = served_order(w, profiles, 100, max_waiting=1)
    assert (r.queue_full, r.rejected, r.admitted_after_wait, r.served) == (1, 1, 2, 3)
    assert [(m, a) for m, a, _ in done] == [("X", 0), ("Y", 0.5), ("Y", 0.55)]
    assert (r.cold_starts, r.hits) == (2, 1)
    r0 = simulate(w, profiles, "lru", 100, placement="arrival", max_waiting=0)
    assert (r0.queue_full, r0.served) == (3, 1)


def test_queued_requests_do_not_pin_their_model(tmp_path):
    """(e) One worker, cap 200. A loads 0–1, runs 1–2. B loads 3–4, runs 4–14. A@5 is queued
    behind B (a hit when it arrives). C@6 needs 100: B executes (pinned), and A is only
    queued — not pinned, but not evicted under its request either: A is drained (it takes no
    new request) and C waits. At 14 B ends: C evicts B (idle) and is queued; the worker runs
    A@5, a hit (14–15), then A goes; C loads 15–16, runs 16–17. (Before, queued requests
    pinned A: C was refused.)"""
    profiles = {"A": ModelCost(1.0, 1.0, 100, 0.0), "B": ModelCost(1.0, 10.0, 100, 0.0),
                "C": ModelCost(1.0, 1.0, 100, 0.0)}  # fmt: skip
    w = workload(tmp_path, [(0, "A"), (3, "B"), (5, "A"), (6, "C")])
    r, done = served_order(w, profiles, 200)
    assert (r.rejected, r.admitted_after_wait, r.hits) == (0, 1, 1)
    assert (r.cold_starts, r.evictions) == (3, 2)
    assert [(m, f) for m, _, f in done] == [("A", 2), ("B", 14), ("A", 15), ("C", 17)]


def test_models_with_queued_requests_are_evicted_last(tmp_path):
    """As in the agent, the policy chooses among models nobody has requests queued for first.
    One worker, cap 300, FIFO (evicts the longest cached). A@0 (0–2), D@2.5 (2.5–4.5), B@5
    loads 5–6 and runs 6–16. A@7 is a hit queued behind B. C@8 needs 100: B executes, A is
    oldest but has a request queued, so D goes. At 16 A@7 is still a hit (16–17); C loads
    17–18, runs 18–19."""
    profiles = {"A": ModelCost(1.0, 1.0, 100, 0.0), "B": ModelCost(1.0, 10.0, 100, 0.0),
                "C": ModelCost(1.0, 1.0, 100, 0.0), "D": ModelCost(1.0, 1.0, 100, 0.0)}  # fmt: skip
    w = workload(tmp_path, [(0, "A"), (2.5, "D"), (5, "B"), (7, "A"), (8, "C")])
    done: list[tuple[str, float, float]] = []
    r = simulate(w, profiles, "fifo", 300, placement="arrival",
                 on_served=lambda *a: done.append(a))  # fmt: skip
    assert (r.hits, r.cold_starts, r.evictions) == (1, 4, 1)
    assert [(m, f) for m, _, f in sorted(done, key=lambda d: d[2])] == [
        ("A", 2),
        ("D", 4.5),
        ("B", 16),
        ("A", 17),
        ("C", 19),
    ]


def test_admission_costs_nothing_when_nobody_waits(tmp_path):
    """(f) The seeded workload of test_deterministic_with_seed, spaced so that nothing ever
    waits: arrival placement gives exactly what it gave before the admission queue existed
    (numbers recorded from that version)."""
    reqs = [(i * 2.6, "ABC"[(i * 7) % 3 if i % 5 else 0]) for i in range(300)]
    w = workload(tmp_path, reqs)
    for policy, want in (
        ("cremebrulee", (139, 161, 159, 162.0, 1.04)),
        ("random", (163, 137, 135, 184.0, 1.1133333333333333)),
    ):
        r = simulate(w, PROFILES, policy, 200, workers=2, seed=3, placement="arrival")
        assert (r.admitted_after_wait, r.timed_out, r.queue_full, r.rejected) == (0, 0, 0, 0)
        got = (r.hits, r.cold_starts, r.evictions, r.total_load_delay_s, r.mean_response_s)
        assert got == pytest.approx(want)


def test_cli_arrival_placement_admission_options(tmp_path):
    """--deadline / --max-waiting reach the simulator; the table shows the admission counts."""
    w = workload(tmp_path, [(0, "A"), (0.1, "B"), (0.2, "C"), (0.3, "B")])
    common = ["simulate", "--workload", w, "--profiles", profile_file(tmp_path), "--policies",
              "lru", "--memory-cap", "100", "--placement", "arrival"]  # fmt: skip
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [*common, "--max-waiting", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "queue_full" in res.output and "timed_out" in res.output
    (row,) = csv.DictReader(open(out / "results.csv"))
    # A runs 0-1.5; B@0.1 waits; C@0.2 finds the one waiting model's place taken; B@0.3
    # rides along with B@0.1
    assert (row["queue_full"], row["admitted_after_wait"], row["timed_out"]) == ("1", "2", "0")
    res = CliRunner().invoke(main, [*common, "--deadline", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    (row,) = csv.DictReader(open(out / "results.csv"))
    # deadline 1 s: B@0.1, C@0.2 leave at 1.1, 1.2 (A holds memory until 1.5); B@0.3 at 1.3
    assert (row["timed_out"], row["admitted_after_wait"]) == ("3", "0")
    res = CliRunner().invoke(main, [*common, "--deadline", "inf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["meta"]["deadline_s"] == "inf"
    res = CliRunner().invoke(main, [*common, "--deadline", "0", "--out", str(out)])
    assert res.exit_code != 0 and "--deadline" in res.output


@pytest.mark.parametrize("policy", ["lru", "gdsf", "belady"])
def test_hit_runs_in_bulk_equal_one_request_at_a_time(tmp_path, monkeypatch, policy):
    """``loadgen.sim.hitrun`` applies hits in bulk; every result field must equal the loop's."""
    import random
    from dataclasses import asdict

    from loadgen.sim import fastloop, hitrun
    from loadgen.sim_workload import CompactWorkload
    from loadgen.simulator import run

    monkeypatch.setattr(fastloop.FastLoop, "applies", staticmethod(lambda sim: False))
    rng = random.Random(3)
    t, reqs = 0.0, []
    for _ in range(4000):
        t += rng.expovariate(1.0)
        reqs.append((t, rng.choice("AAAAAAAAABBC")))
    calls = []
    real_apply = hitrun.HitRuns._apply
    monkeypatch.setattr(
        hitrun.HitRuns,
        "_apply",
        lambda self, a, *r: calls.append(len(a)) or real_apply(self, a, *r),
    )
    with CompactWorkload(workload(tmp_path, reqs)) as wl:
        bulk = [asdict(run(wl, PROFILES, policy, 250, w)) for w in (1, 8)]
        assert sum(calls) > 500  # the bulk path took hundreds of requests
        monkeypatch.setattr(hitrun.HitRuns, "applies", staticmethod(lambda sim: False))
        loop = [asdict(run(wl, PROFILES, policy, 250, w)) for w in (1, 8)]
    assert bulk == loop


@pytest.mark.parametrize("policy", ["lru", "cremebrulee", "lfu", "random"])
def test_compiled_loop_equals_the_python_loop(tmp_path, monkeypatch, policy):
    """``loadgen.sim.fastloop`` runs start placement compiled; every result field must equal
    the Python loop's: misses (two of three models fit), load waits (8 workers), rejections
    (BIG > cap), a burst that grows a queue past its first capacity (256), unload times."""
    import random
    from dataclasses import asdict

    from loadgen.sim import fastloop, hitrun
    from loadgen.sim_workload import CompactWorkload
    from loadgen.simulator import run

    rng = random.Random(5)
    t, reqs = 0.0, []
    for k in range(6000):
        t += rng.expovariate(2.5)
        reqs.append((t, rng.choice("AAAAAABBC") if k % 997 else "BIG"))
    reqs += [(t + 1, rng.choice("AB")) for _ in range(700)]  # one instant: queues grow
    profiles = {**PROFILES, "C": ModelCost(1.0, 0.3, 100, 0.25)}
    runs = []
    real_run = fastloop.FastLoop.run
    monkeypatch.setattr(
        fastloop.FastLoop, "run", lambda self, p: runs.append(1) or real_run(self, p)
    )
    with CompactWorkload(workload(tmp_path, reqs)) as wl:
        fast = [asdict(run(wl, profiles, policy, 250, w, seed=2)) for w in (1, 2, 8)]
        assert len(runs) == 3  # the compiled loop ran
        monkeypatch.setattr(fastloop.FastLoop, "applies", staticmethod(lambda sim: False))
        monkeypatch.setattr(hitrun.HitRuns, "applies", staticmethod(lambda sim: False))
        loop = [asdict(run(wl, profiles, policy, 250, w, seed=2)) for w in (1, 2, 8)]
    assert fast == loop
    assert all(r["rejected"] and r["cold_starts"] > 50 for r in fast)
    assert fast[2]["load_waits"] > 0
