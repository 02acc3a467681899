"""Soak test: the real ``brulee up`` under memory pressure and faults, every answer accounted.

    python benchmarks/soak.py [--models zoo/edge] [--minutes 10] [--cap 50%] [--out out/soak]

Starts ``brulee up`` (embedded Redis, gunicorn, ``--workers`` workers) on a scratch copy of the
models directory with the memory cap at ``--cap`` of the workload's working set (the loaded
bytes of the models it uses, from the directory's ``profiles.json``; profiled into the copy when
there is none), and for ``--minutes``:

- replays an Azure-like workload (``brulee trace synth`` paired onto the models by load cost)
  open-loop from a thread pool, a share (``--async-share``) as async jobs polled to their end
  (``loadgen.soak_load``);
- injects faults in rotation every ``--fault-every`` s — SIGKILL a worker, SIGSTOP one for
  ``--stop-seconds``, SIGKILL the embedded redis-server, a model file turned to garbage between
  deploy and first call, a corrupt model deployed — and records whether the agent recovered
  and how fast (``loadgen.soak_faults``);
- checks the invariants once a second on ``/system/cache`` (``loadgen.soak_checks``).

Prints a progress line every 10 s and, at the end, tables of requests by outcome, faults,
invariant violations and async jobs; writes ``OUT/soak.json``. Exits 1 if an invariant was
violated, a request was unanswered (or answered without a cause), an async job was lost, a
fault was not recovered from within ``--recover-timeout`` or the agent exited.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
from tabulate import tabulate

from loadgen.replay_payloads import build_payloads
from loadgen.soak_checks import Checker, rss_tolerance
from loadgen.soak_faults import KINDS, Injector
from loadgen.soak_load import Load, agent_session, make_workload
from loadgen.testbed import agent_process, parse_cap, working_set_bytes
from loadgen.workload_file import iter_workload

REPO = Path(__file__).resolve().parent.parent


def default_models() -> str:
    if (REPO / "zoo" / "edge" / "catalog.json").exists():
        return str(REPO / "zoo" / "edge")
    return os.environ.get("BRULEE_TEST_MODELS") or str(REPO / ".cache" / "test-models")


def scratch_models(source: Path, profiles: str | None, into: Path) -> Path:
    """Copy the models (the faults write into the directory) with a profile."""
    into.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix in (".tflite", ".json") and item.is_file():
            shutil.copy(item, into / item.name)
    if profiles:
        shutil.copy(profiles, into / "profiles.json")
    if not (into / "profiles.json").exists():
        click.echo(f"{source} has no profiles.json: profiling a copy (brulee models profile)")
        subprocess.run(
            [
                str(Path(sys.executable).with_name("brulee")),
                "models",
                "profile",
                "--models",
                str(into),
                "--runs",
                "3",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return into


def progress(t: float, load: Load, faults: Injector, checks: Checker) -> str:
    counts = load.tally.counts
    ok = sum(n for k, n in counts.items() if k.startswith(("200", "202")))
    recovered = sum(1 for f in faults.faults if f.recovered)
    return (
        f"t={t:5.0f}s sent {load.sent} ok {ok} errors {sum(counts.values()) - ok} "
        f"(bad {load.tally.bad()}) async pending {len(load.jobs.pending)} | faults "
        f"{len(faults.faults)} recovered {recovered} | violations "
        f"{sum(checks.violations.values())} unreachable {sum(checks.unreachable.values())}s"
    )


def tables(doc: dict) -> str:
    req = doc["requests"]
    rows = [(k, n, "; ".join(req["examples"].get(k, []))[:110]) for k, n in req["counts"].items()]
    rows += [(f"not sent: {k}", n, "") for k, n in doc["not_sent"].items()]
    out = [
        f"requests: {req['sent']} sent (answered or not: {sum(req['counts'].values())})",
        tabulate(rows, ["outcome", "requests", "first messages"], tablefmt="github"),
    ]
    frows = [
        (
            f["at_s"],
            f["kind"],
            f["target"][:40],
            "yes" if f["injected"] else "no",
            {True: "yes", False: "NO", None: "-"}[f["recovered"]],
            f["recover_s"],
            "; ".join(f["detail"])[:120],
        )
        for f in doc["faults"]
    ]
    out += [
        "\nfaults",
        tabulate(
            frows,
            ["t s", "fault", "target", "injected", "recovered", "recover s", "detail"],
            tablefmt="github",
        ),
    ]
    inv = doc["invariants"]
    irows = [
        (k, n, " | ".join(inv["examples"].get(k, []))[:160]) for k, n in inv["violations"].items()
    ] or [("(none)", 0, "")]
    irows += [
        (f"agent unreachable: {k}", n, "not a violation") for k, n in inv["unreachable_s"].items()
    ]
    out += [
        f"\ninvariants: {inv['checks']} checks; peak used/cap {inv['peak']['used_over_cap']}, "
        f"peak rss - (cap + baseline) {inv['peak']['rss_over_cap_plus_baseline_bytes']} B "
        f"(tolerance {inv['rss_tolerance_bytes']} B)",
        tabulate(irows, ["violation", "seconds/copies", "first examples"], tablefmt="github"),
    ]
    jobs = doc["async_jobs"]
    jrows = [("accepted", jobs["accepted"], "")]
    jrows += [
        (k, n, "; ".join(jobs["examples"].get(k, []))[:110]) for k, n in jobs["counts"].items()
    ]
    out += ["\nasync jobs", tabulate(jrows, ["jobs", "count", "first messages"], tablefmt="github")]
    return "\n".join(out)


@click.command()
@click.option(
    "--models",
    default=default_models,
    show_default="zoo/edge if built, else the test set ($BRULEE_TEST_MODELS or .cache/test-models)",
    type=click.Path(exists=True, file_okay=False),
)
@click.option(
    "--profiles",
    type=click.Path(exists=True, dir_okay=False),
    help="[default: MODELS/profiles.json, else profiled into the scratch copy]",
)
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(min=0.05))
@click.option(
    "--cap", default="50%", show_default=True, help="PCT% of the workload's working set, or bytes"
)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--policy", default="cremebrulee", show_default=True)
@click.option("--rate", default=8.0, show_default=True, help="mean requests/s of the workload")
@click.option("--functions", default=40, show_default=True, help="synthetic functions")
@click.option("--async-share", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--threads", default=64, show_default=True, help="client threads")
@click.option(
    "--faults",
    "fault_kinds",
    default=",".join(KINDS),
    show_default=True,
    help="kinds, in rotation order ('' for none)",
)
@click.option("--fault-every", default=40.0, show_default=True, help="seconds between faults")
@click.option("--first-fault", default=None, type=float, help="[default: fault-every / 2]")
@click.option("--stop-seconds", default=10.0, show_default=True, help="SIGSTOP duration")
@click.option("--recover-timeout", default=30.0, show_default=True)
@click.option(
    "--request-timeout",
    default=75.0,
    show_default=True,
    help="client timeout (the agent answers a sync call within 60 s)",
)
@click.option("--grace", default=30.0, show_default=True, help="for async jobs after the load")
@click.option(
    "--durability",
    default="strict",
    show_default=True,
    type=click.Choice(["strict", "fast"]),
    help="the agent's --durability (an accepted job lost under strict fails the soak)",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="out/soak", show_default=True, type=click.Path(file_okay=False))
def main(
    models,
    profiles,
    minutes,
    cap,
    workers,
    policy,
    rate,
    functions,
    async_share,
    threads,
    fault_kinds,
    fault_every,
    first_fault,
    stop_seconds,
    recover_timeout,
    request_timeout,
    grace,
    seed,
    out,
    durability,
) -> None:
    """Serve under memory pressure and faults; check the invariants every second."""
    kinds = [k for k in fault_kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        raise click.BadParameter(f"known: {', '.join(KINDS)}", param_hint="--faults")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="brulee-soak-") as tmp:
        models_dir = scratch_models(Path(models), profiles, Path(tmp) / "models")
        doc = soak(
            models_dir,
            outdir,
            Path(tmp) / "state",
            minutes,
            cap,
            workers,
            policy,
            rate,
            functions,
            async_share,
            threads,
            kinds,
            fault_every,
            fault_every / 2 if first_fault is None else first_fault,
            stop_seconds,
            recover_timeout,
            request_timeout,
            grace,
            seed,
            durability,
        )
    (outdir / "soak.json").write_text(json.dumps(doc, indent=1))
    click.echo("\n" + tables(doc))
    click.echo(
        f"\n{'FAILED: ' + '; '.join(doc['failed']) if doc['failed'] else 'passed'} "
        f"(JSON in {outdir / 'soak.json'})"
    )
    sys.exit(1 if doc["failed"] else 0)


def soak(
    models_dir: Path,
    outdir: Path,
    state: Path,
    minutes,
    cap,
    workers,
    policy,
    rate,
    functions,
    async_share,
    threads,
    kinds,
    fault_every,
    first_fault,
    stop_seconds,
    recover_timeout,
    request_timeout,
    grace,
    seed,
    durability="strict",
) -> dict:
    from models.catalog import load_catalog
    from models.profile import read_profiles

    profiles = models_dir / "profiles.json"
    profiled = read_profiles(profiles)
    usable = sorted(m for m in load_catalog(models_dir) if m in profiled)
    workload = make_workload(
        profiles, usable, minutes, rate, functions, seed, outdir / "workload.csv"
    )
    total, sizes = working_set_bytes(workload, str(profiles))
    cap_bytes = parse_cap(cap, total)
    scheduled = list(iter_workload(workload))
    click.echo(
        f"workload: {len(scheduled)} requests over {minutes:g} min on {len(sizes)} models, "
        f"working set {total / 1e6:.1f} MB, cap {cap} = {cap_bytes / 1e6:.1f} MB; "
        f"{workers} workers, faults {', '.join(kinds) or 'none'} every {fault_every:g} s"
    )
    too_big = sorted(m for m, b in sizes.items() if b > cap_bytes)
    if too_big:
        click.echo(f"note: {', '.join(too_big)} exceed the cap: their calls answer 507")
    token = secrets.token_hex(16)
    with agent_process(
        models_dir, cap_bytes, policy, workers, state, token, durability=durability
    ) as url:
        session = agent_session(token)
        payloads = build_payloads(session.get(url + "/system/functions", timeout=10).json())
        probe = min(usable, key=lambda m: profiled[m]["loaded_bytes"])  # the recovery probe
        load = Load(url, token, payloads, threads, request_timeout, async_share, seed)
        t0 = time.monotonic()
        load_s = {m: float(r.get("avg_load_latency") or 1.0) for m, r in profiled.items()}
        checks = Checker(url, token, load_s, workers, t0)
        faults = Injector(
            url,
            token,
            state,
            models_dir,
            workers,
            payloads,
            probe,
            t0,
            recover_timeout,
            stop_seconds,
        )
        stop = threading.Event()
        length = minutes * 60
        runners = [
            threading.Thread(target=load.run, args=(scheduled, t0, stop), daemon=True),
            threading.Thread(
                target=faults.run, daemon=True, args=(kinds, first_fault, fault_every, length, stop)
            ),
            threading.Thread(target=load.poll_jobs, args=(stop,), daemon=True),
        ]
        checks.start()
        for thread in runners:
            thread.start()
        exited_at = None
        try:
            last = time.monotonic()
            while runners[0].is_alive():
                runners[0].join(timeout=1)
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    click.echo(progress(last - t0, load, faults, checks))
                if exited_at is None and not faults.agent_running():
                    exited_at = round(time.monotonic() - t0, 1)
                    click.echo(f"the `brulee up` process exited at t={exited_at}s: stopping")
                    stop.set()
            load.finish()
            runners[1].join(timeout=recover_timeout + stop_seconds + 30)
            stop.set()
            runners[2].join(timeout=5)
            load.jobs.drain(grace if exited_at is None else 0)
        finally:
            stop.set()
            faults.resume_all()
            checks.stop()
        shutil.copy(state / "agent.log", outdir / "agent.log")
    doc = report(
        load,
        faults,
        checks,
        scheduled,
        cap_bytes,
        total,
        sizes,
        workers,
        exited_at,
        time.monotonic() - t0,
    )
    doc["settings"]["durability"] = durability
    return doc


def report(
    load, faults, checks, scheduled, cap_bytes, total, sizes, workers, exited_at, elapsed
) -> dict:
    requests_doc = load.tally.doc()
    doc = {
        "settings": {
            "cap_bytes": cap_bytes,
            "working_set_bytes": total,
            "models": sizes,
            "workers": workers,
        },
        "elapsed_s": round(elapsed, 1),
        "agent_exited_at_s": exited_at,
        "scheduled": len(scheduled),
        "not_sent": dict(load.skipped),
        "max_send_lag_s": round(load.max_lag, 3),
        "requests": {"sent": load.sent, **requests_doc, "bad": load.tally.bad()},
        "faults": faults.doc(),
        "invariants": {**checks.doc(), "rss_tolerance_bytes": rss_tolerance(cap_bytes, workers)},
        "async_jobs": {
            "accepted": load.jobs.accepted,
            **load.jobs.ends.doc(),
            "lost": load.jobs.lost(),
        },
    }
    failed = []
    if doc["invariants"]["violations"]:
        failed.append(f"{sum(checks.violations.values())} invariant violation(s)")
    if doc["requests"]["bad"]:
        failed.append(f"{doc['requests']['bad']} request(s) unanswered or without a cause")
    if doc["async_jobs"]["lost"]:
        failed.append(f"{doc['async_jobs']['lost']} async job(s) lost")
    unrecovered = [
        f"{f.kind} at {f.at_s}s" for f in faults.faults if f.injected and not f.recovered
    ]
    if unrecovered:
        failed.append(f"not recovered from {', '.join(unrecovered)}")
    if exited_at is not None:
        failed.append(f"the agent exited at t={exited_at}s")
    doc["failed"] = failed
    return doc


if __name__ == "__main__":
    main()
