"""Memory-adaptive variants (agent.variants): the rule, the stack file's declarations, and the
real agent serving a smaller variant under pressure and upgrading it when memory frees."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from agent.variants import Variant, choose, prefers_variant, upgrade_target
from tests.agent_fixtures import running_agent

F32 = Variant("m", 400, 0.5, 0.01, 0.99, "m.tflite")
F16 = Variant("m-fp16", 300, 0.4, 0.01, 0.985, "m-fp16.tflite")
I8 = Variant("m-int8", 100, 0.3, 0.02, 0.90, "m-int8.tflite")
ALL = [F32, F16, I8]


@dataclass
class Copy:
    requests: int
    load_s: float


def test_rule_serves_the_best_held_or_what_fits():
    never = lambda: pytest.fail("victims asked although the answer does not depend on them")  # noqa: E731
    assert choose(ALL, {"m-int8", "m"}, 0, 5, never) is F32  # the best held: a hit
    assert choose(ALL, {"m-int8"}, 500, 5, never) is I8  # warm; the upgrade loads the best
    assert choose(ALL, set(), 500, 5, never) is F32  # no pressure
    assert choose(ALL, set(), 50, 5, never) is F32  # nothing fits: evict for the best
    # ... unless the best is larger than the cap (it could never be placed): the best variant
    # that fits the cap, evicting for it
    assert choose(ALL, set(), 50, 5, never, cap=350) is F16
    assert choose(ALL, set(), 50, 5, never, cap=150) is I8
    assert choose(ALL, set(), 50, 5, never, cap=50) is F32  # none fits: the agent's 507


def test_rule_weighs_what_the_variant_costs_against_what_eviction_throws_away():
    # F16: 10 requests x (0.005 x 0.5 s + 0) = 0.025 vs one victim of 1 request x 1 s
    assert choose(ALL, set(), 350, 10, lambda: [Copy(1, 1.0)]) is F16
    # I8: 10 x (0.09 x 0.5 + 0.01 s slower) = 0.55 > 0.1: evict for the best instead
    assert choose(ALL, set(), 150, 10, lambda: [Copy(1, 0.1)]) is F32
    assert choose(ALL, set(), 150, 10, lambda: [Copy(1, 0.56)]) is I8
    assert choose(ALL, set(), 150, 10, lambda: None) is I8  # the best cannot be placed now
    assert prefers_variant(F32, I8, 10, []) is False  # nothing to evict (it fits elsewhere)
    # a held variant serves warm while it is worth it, and gives way as requests grow
    assert choose(ALL, {"m-int8"}, 0, 10, lambda: [Copy(50, 1.0)]) is I8
    assert choose(ALL, {"m-int8"}, 0, 1000, lambda: [Copy(50, 1.0)]) is F32


def test_upgrade_only_into_free_memory_and_only_when_served_smaller():
    assert upgrade_target(ALL, {"m-int8"}, 1000) is F32
    assert upgrade_target(ALL, {"m-int8"}, 350) is F16
    assert upgrade_target(ALL, {"m-int8"}, 200) is None  # never evicting for it
    assert upgrade_target(ALL, {"m"}, 1000) is None  # the best is held
    assert upgrade_target(ALL, set(), 1000) is None  # nothing was served smaller


# --- declarations in functions/stack.yml --------------------------------------------------


@pytest.fixture(scope="module")
def variant_models(dtype_models: Path, tmp_path_factory) -> Path:
    """The digits model in every dtype, profiled by ``brulee models profile`` (bytes, load,
    exec, held-out digits accuracy) in a scratch directory."""
    from models.profile import profile_dir

    out = tmp_path_factory.mktemp("variant-models")
    for f in dtype_models.iterdir():
        shutil.copy(f, out / f.name)
    profile_dir(out, out / "profiles.json", runs=3, progress=False)
    return out


def _stack(tmp_path: Path, functions: dict) -> Path:
    path = tmp_path / "stack.yml"
    path.write_text(json.dumps({"version": 1, "functions": functions}))  # JSON is YAML
    return path


def _load(tmp_path: Path, models: Path, spec: dict):
    from functions.stack import load_stack
    from models.catalog import load_catalog

    return load_stack(_stack(tmp_path, {"digits": spec}), models, load_catalog(models))


def test_variants_are_declared_with_measured_accuracy(tmp_path, variant_models):
    spec = {"model": "digits-cnn", "variants": ["digits-cnn", "digits-cnn-int8-full"]}
    fn = _load(tmp_path, variant_models, {**spec, "min_accuracy": 0.5})["digits"]
    assert [v["model"] for v in fn.variants] == ["digits-cnn", "digits-cnn-int8-full"]
    assert all(0.9 < v["accuracy"] <= 1 for v in fn.variants)  # a trained digits model
    assert fn.min_accuracy == 0.5
    declared = {**spec, "variants": ["digits-cnn", {"model": "digits-cnn-int8", "accuracy": 0.4}]}
    fn = _load(tmp_path, variant_models, {**declared, "min_accuracy": 0.5})["digits"]
    assert [v["model"] for v in fn.variants] == ["digits-cnn"]  # below the floor: never served


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"variants": ["digits-cnn", "digits-cnn-int4"]}, "variant model 'digits-cnn-int4'"),
        ({"variants": ["digits-cnn-int8", "digits-cnn"]}, "must start with the function's model"),
        ({"variants": ["digits-cnn"], "min_accuracy": 1.0}, "above the best variant's accuracy"),
        ({"variants": ["digits-cnn"], "min_accuracy": 2}, "between 0 and 1"),
        ({"min_accuracy": 0.9}, "min_accuracy needs variants"),
        ({"variants": []}, "non-empty list"),
        ({"variants": ["digits-cnn", "digits-cnn"]}, "list a model twice"),
        ({"variants": ["digits-cnn", {"model": "digits-cnn-int8", "acc": 1}]}, "unknown key"),
        ({"variants": [{"model": "digits-cnn", "accuracy": "high"}]}, "a fraction 0..1"),
    ],
)
def test_bad_variant_declarations_are_named(tmp_path, variant_models, spec, message):
    with pytest.raises(ValueError, match="function 'digits'.*" + message):
        _load(tmp_path, variant_models, {"model": "digits-cnn", **spec})


def test_a_floor_needs_every_variants_accuracy(tmp_path, dtype_models):
    spec = {"model": "digits-cnn", "variants": ["digits-cnn"], "min_accuracy": 0.9}
    unprofiled = tmp_path / "models"  # the models without a profiles.json (none measured)
    shutil.copytree(dtype_models, unprofiled, ignore=shutil.ignore_patterns("profiles.json"))
    with pytest.raises(ValueError, match=r"needs every variant's accuracy; \['digits-cnn'\]"):
        _load(tmp_path, unprofiled, spec)


def test_a_variant_with_another_signature_is_refused(tmp_path, test_models):
    spec = {"model": "digits-cnn", "variants": ["digits-cnn", "tiny-cnn"]}
    with pytest.raises(ValueError, match="variant 'tiny-cnn' has another input/output"):
        _load(tmp_path, test_models, spec)


# --- the real agent -----------------------------------------------------------------------


def _digits_with_int8_full(**extra) -> dict:
    """The digits function's stack entry with its full-integer variant."""
    variants = ["digits-cnn", "digits-cnn-int8-full"]
    return {"model": "digits-cnn", "handler": "digits", "variants": variants, **extra}


def _call(agent: dict, name: str) -> requests.Response:
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    resp = requests.post(f"{agent['url']}/function/{name}", json={"inputs": x.tolist()}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp


def test_agent_serves_a_smaller_variant_under_pressure_and_upgrades_it(tmp_path, variant_models):
    """Memory gets short (the device's cap lowered in Redis, as a worker registering with a
    smaller ``--memory-cap`` would): the digits function is answered by its int8 variant
    instead of evicting the other function's model; once memory frees, the keep-alive loop's
    upgrade loads float32 in the background and the next answer is a float32 hit."""
    import redis

    from agent.keys import key
    from agent.placement import Placement
    from agent.registry import Profiles, model_facts
    from agent.up import keep_alive_loop, upgrade_variants

    stack = _stack(
        tmp_path,
        {
            "digits": _digits_with_int8_full(min_accuracy=0.9),
            "other": {"model": "digits-cnn-fp16", "handler": "digits"},
        },
    )
    with running_agent(variant_models, 64 << 20, functions_file=str(stack)) as agent:
        conn = redis.Redis.from_url(agent["redis_url"])
        assert _call(agent, "other").headers["X-Variant"] == "digits-cnn-fp16"
        used = sum(json.loads(v)["bytes"] for v in conn.hvals(key("entries", "dev")))
        profiles = Profiles(variant_models)

        def facts(model: str):
            doc = {"name": model, "model": model, "file": f"{model}.tflite"}
            return model_facts(conn, doc, variant_models, profiles.get(model))[0]

        f32, i8 = facts("digits-cnn").bytes, facts("digits-cnn-int8-full").bytes
        assert i8 < f32
        conn.hset(key("device", "dev"), "cap", used + (f32 + i8) // 2)  # memory is short
        first = _call(agent, "digits")
        assert (first.headers["X-Variant"], first.headers["X-Cache"]) == (
            "digits-cnn-int8-full",
            "miss",
        )
        assert _call(agent, "digits").headers["X-Variant"] == "digits-cnn-int8-full"  # warm
        assert _call(agent, "other").headers["X-Cache"] == "hit"  # not evicted for it
        placement = Placement(conn)
        assert upgrade_variants(conn, placement, variant_models, profiles) == []  # no room
        conn.hset(key("device", "dev"), "cap", 64 << 20)  # memory frees
        stop = threading.Event()  # the loop `brulee up` runs, without a keep-alive policy
        loop = threading.Thread(
            target=keep_alive_loop, args=(agent["redis_url"], None, stop, variant_models, 0.1)
        )
        loop.start()
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                states = {
                    m.split("|")[0]: json.loads(v)["state"] for m, v in _entries(conn).items()
                }
                if states.get("digits-cnn") == "ready":
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            loop.join(10)
        assert int(conn.hget(key("upgrades", "dev"), "digits-cnn")) == 1
        upgraded = _call(agent, "digits")
        assert (upgraded.headers["X-Variant"], upgraded.headers["X-Cache"]) == ("digits-cnn", "hit")
        assert "digits-cnn-fp16" in _entries_models(conn)  # nothing was evicted for it
        auth = {"Authorization": f"Bearer {agent['token']}"}
        bad = {"name": "d2", "model": "digits-cnn", "variants": ["digits-cnn", "digits-cnn-x"]}
        resp = requests.post(f"{agent['url']}/system/functions", json=bad, headers=auth, timeout=10)
        assert resp.status_code == 400 and "variant model 'digits-cnn-x'" in resp.json()["error"]
        good = {**bad, "variants": ["digits-cnn", "digits-cnn-int8"], "min_accuracy": 0.9}
        resp = requests.post(
            f"{agent['url']}/system/functions", json=good, headers=auth, timeout=10
        )
        assert resp.status_code == 201 and resp.json()["min_accuracy"] == 0.9, resp.text
        assert _call(agent, "d2").headers["X-Variant"] == "digits-cnn"  # room: the best
        doc = requests.get(f"{agent['url']}/openapi.json", timeout=10).json()
        ok = doc["paths"]["/function/{name}"]["post"]["responses"]["200"]
        assert ok["headers"]["X-Variant"]["required"] is True
        deploy = doc["components"]["schemas"]["DeployRequest"]["properties"]
        assert {"variants", "min_accuracy"} <= set(deploy)


def test_agent_serves_a_variant_when_the_best_is_larger_than_the_cap(tmp_path, variant_models):
    """A cap below the best model's bytes and too little free memory for any variant: without
    variants the agent answers 507; with them the largest variant that fits the cap serves,
    evicting what it must."""
    import redis

    from agent.keys import key
    from agent.registry import Profiles, model_facts

    stack = _stack(
        tmp_path,
        {
            "digits": _digits_with_int8_full(),
            "plain": {"model": "digits-cnn", "handler": "digits"},
            "other": {"model": "digits-cnn-int8", "handler": "digits"},
        },
    )
    with running_agent(variant_models, 64 << 20, functions_file=str(stack)) as agent:
        conn = redis.Redis.from_url(agent["redis_url"])
        profiles = Profiles(variant_models)

        def nbytes(model: str) -> int:
            doc = {"name": model, "model": model, "file": f"{model}.tflite"}
            return model_facts(conn, doc, variant_models, profiles.get(model))[0].bytes

        f32, i8 = nbytes("digits-cnn"), nbytes("digits-cnn-int8-full")
        conn.hset(key("device", "dev"), "cap", (f32 + i8) // 2)  # below the best model
        _call(agent, "other")  # what is left free is too little for the variant too
        assert (f32 + i8) // 2 - nbytes("digits-cnn-int8") < i8
        x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
        plain = requests.post(
            f"{agent['url']}/function/plain", json={"inputs": x.tolist()}, timeout=60
        )
        assert plain.status_code == 507, plain.text
        served = _call(agent, "digits")
        assert served.headers["X-Variant"] == "digits-cnn-int8-full", served.headers
        assert _entries_models(conn) == {"digits-cnn-int8-full"}  # the filler was evicted


def _entries(conn) -> dict[str, bytes]:
    from agent.keys import key

    return {k.decode(): v for k, v in conn.hgetall(key("entries", "dev")).items()}


def _entries_models(conn) -> set[str]:
    return {s.split("|")[0] for s in _entries(conn)}


# --- the simulator runs the same rule -----------------------------------------------------


def _simulate(tmp_path: Path, spec, reqs, profiles, cap: int, placement: str = "arrival"):
    from loadgen.sim.engine import Simulation
    from loadgen.sim_workload import CompactWorkload
    from tests.test_simulator import workload

    with CompactWorkload(workload(tmp_path, reqs)) as wl:
        sim = Simulation(wl, profiles, "lru", cap, 1, 0, None, placement, 30.0, 100, None, spec)
        return sim.run(), sim.place.variants


def _profiles(a_load: float) -> dict:
    from loadgen.profiles import ModelCost

    return {
        "A": ModelCost(a_load, 0.1, 300, 0.0),
        "A-i8": ModelCost(0.5, 0.1, 100, 0.0),
        "B": ModelCost(1.0, 0.1, 200, 0.0),
    }


@pytest.mark.parametrize("placement", ["arrival", "start"])
@pytest.mark.parametrize(("a_load", "int8_accuracy"), [(1.0, 0.90), (5.0, 0.50)])
def test_simulator_chooses_as_the_rule(tmp_path, a_load, int8_accuracy, placement):
    """A arrives with B cached and room for A's int8 only: the rule weighs (0.99 - a) x 1
    request x A's load against evicting B (1 request x 1 s); the simulator does what
    ``agent.variants.choose`` says for those numbers (0.09 <= 1: the variant, then warm;
    2.45 > 1: evict B for A). Start placement decides as the worker starts each request (one
    worker, nothing queued: the same moments), so it gives the same answers."""
    from loadgen.sim.variants import VariantSpec

    spec = VariantSpec({"A": ["A", "A-i8"]}, {"A": 0.99, "A-i8": int8_accuracy})
    reqs = [(0, "B"), (10, "A"), (20, "A"), (30, "B")]
    profiles = _profiles(a_load)
    res, used = _simulate(tmp_path, spec, reqs, profiles, 350, placement)
    vs = [
        Variant(n, profiles[n].bytes, profiles[n].load_s, 0.1, spec.accuracy[n])
        for n in spec.of["A"]
    ]
    expected = choose(vs, set(), 150, 1, lambda: [Copy(1, 1.0)]).name
    assert expected == ("A-i8" if int8_accuracy == 0.90 else "A")
    if expected == "A-i8":
        assert used.served == {"A-i8": 2}  # chosen, then served warm
        assert (res.cold_starts, res.evictions, res.hits) == (2, 0, 2)
    else:
        assert used.served == {}
        assert (res.cold_starts, res.evictions, res.hits) == (3, 2, 1)
    plain, _ = _simulate(tmp_path, None, reqs, profiles, 350, placement)
    assert (plain.cold_starts, plain.evictions) == (3, 2)  # without variants: A and B swap


def test_simulator_refuses_variants_without_profiles(tmp_path):
    from loadgen.sim.inputs import SimulationError
    from loadgen.sim.variants import VariantSpec

    with pytest.raises(SimulationError, match=r"variant\(s\) of 'A' without a sized profile"):
        VariantSpec({"A": ["A", "A-fp16"]}).check(_profiles(1.0))
    with pytest.raises(SimulationError, match="must start with 'A'"):
        VariantSpec({"A": ["A-i8", "A"]}).check(_profiles(1.0))


# --- brulee simulate --variants FILE ------------------------------------------------------

VARIANTS_YML = "A: [{model: A, accuracy: 0.99}, {model: A-i8, accuracy: 0.90}]\n"


def _simulate_cli(tmp_path: Path, variants: str | None, *extra: str):
    """``brulee simulate`` over the scenario of test_simulator_chooses_as_the_rule (A's load
    1 s: the int8 variant serves A's two requests)."""
    from click.testing import CliRunner

    from agent.cli import main
    from tests.test_simulator import workload

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"models": [
        {"name": n, "load_s": c.load_s, "exec_s": c.exec_s, "bytes": c.bytes, "unload_s": 0}
        for n, c in _profiles(1.0).items()
    ]}))  # fmt: skip
    w = workload(tmp_path, [(0, "B"), (10, "A"), (20, "A"), (30, "B")])
    args = ["simulate", "--workload", w, "--profiles", str(prof), "--policies", "lru",
            "--memory-cap", "350", "--out", str(tmp_path / "out"), *extra]  # fmt: skip
    if variants is not None:
        (tmp_path / "v.yml").write_text(variants)
        args += ["--variants", str(tmp_path / "v.yml")]
    return CliRunner().invoke(main, args)


def test_cli_simulates_variants_from_a_file(tmp_path):
    """The table and CSV gain each rank's share, the upgrades and the accuracy cost (2 of 4
    requests served by A-i8, 0.09 lost each: 4.5 points per request); results.json names the
    variant; the numbers are the library's (the benchmark's path); start placement too."""
    from loadgen.sim.variants import read_variants

    res = _simulate_cli(tmp_path, VARIANTS_YML, "--placement", "arrival")
    assert res.exit_code == 0, res.output
    assert "v1_share" in res.output and "accuracy_cost_pts" in res.output
    (row,) = csv.DictReader(open(tmp_path / "out" / "results.csv"))
    assert (float(row["v0_share"]), float(row["v1_share"])) == (0.5, 0.5)
    assert float(row["accuracy_cost_pts"]) == pytest.approx(4.5)
    assert (row["variant_upgrades"], row["evictions"], row["cold_starts"]) == ("0", "0", "2")
    (run,) = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert run["variant_served"] == {"A-i8": 2}
    spec = read_variants(str(tmp_path / "v.yml"), _profiles(1.0))
    lib, _ = _simulate(tmp_path, spec, [(0, "B"), (10, "A"), (20, "A"), (30, "B")],
                       _profiles(1.0), 350)  # fmt: skip
    assert lib.summary()["accuracy_cost_pts"] == pytest.approx(4.5)
    res = _simulate_cli(tmp_path, VARIANTS_YML, "--placement", "start")  # the same rule
    assert res.exit_code == 0, res.output
    (start,) = csv.DictReader(open(tmp_path / "out" / "results.csv"))
    assert (start["v1_share"], start["evictions"]) == ("0.5", "0")
    # a floor above int8's accuracy leaves A alone: evicting B for it, as without variants
    floor = "A: {variants: [{model: A, accuracy: 0.99}, {model: A-i8, accuracy: 0.9}], " \
        "min_accuracy: 0.95}\n"  # fmt: skip
    res = _simulate_cli(tmp_path, floor, "--placement", "arrival")
    assert res.exit_code == 0, res.output
    (row,) = csv.DictReader(open(tmp_path / "out" / "results.csv"))
    assert (row["v0_share"], row["evictions"], row["accuracy_cost_pts"]) == ("1.0", "2", "0.0")
    assert "v1_share" not in row


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("A: [A, A-fp16]\n", "'A': variant model 'A-fp16' is not in the profiles"),
        ("A: [A-i8, A]\n", "must start with the function's model 'A'"),
        ("A: [A, A]\n", "list a model twice"),
        ("A: {variants: [A, A-i8], min_accuracy: 0.5}\n", "needs every variant's accuracy"),
        ("A: {varients: [A, A-i8]}\n", "unknown key(s) ['varients']"),
        ("A: A-i8\n", "expected a list of variants or a mapping"),
        ("[A, A-i8]\n", "expected a mapping {model: [variants"),
        ("A: [A, A-i8\n", "v.yml"),  # not YAML
    ],
)
def test_cli_variants_file_errors_are_named(tmp_path, variants, message):
    res = _simulate_cli(tmp_path, variants, "--placement", "arrival")
    assert res.exit_code != 0
    assert message in res.output, res.output


def test_sweep_job_reads_the_variants_file(tmp_path):
    """A sweep's job (what a simulate-worker runs) takes the same file to the same numbers."""
    from loadgen.sim_sweep import make_jobs, result_from, run_job

    assert _simulate_cli(tmp_path, VARIANTS_YML, "--placement", "arrival").exit_code == 0
    (job,) = make_jobs(
        ["350"], ["lru"], [0], workload=str(tmp_path / "w.csv"),
        profiles=str(tmp_path / "p.json"), sizes=None, workers=1, proactive=None,
        placement="arrival", deadline_s=30.0, max_waiting=100, variants=str(tmp_path / "v.yml"),
    )  # fmt: skip
    res = result_from(json.loads(json.dumps(run_job(job))))
    assert res.variant_served == {"A-i8": 2} and res.summary()["v1_share"] == 0.5
