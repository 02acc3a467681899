"""``brulee replay``: replay a workload file against a running agent with Locust."""

from __future__ import annotations

import click

from loadgen.replay_sim import sim_costs_option
from loadgen.workload_file import WorkloadError


@click.command("replay")
@click.option("--workload", "-w", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", required=True, help="the agent's base URL, e.g. http://127.0.0.1:8080")
@click.option("--speedup", default=1.0, show_default=True, help="divide workload times by this")
@click.option("--duration", type=float, help="replay only the first D workload seconds")
@click.option(
    "--users",
    "concurrency",
    default=500,
    show_default=True,
    help="most requests in flight at once (one open-loop Locust user sends them)",
)
@click.option("--map", "map_functions", is_flag=True, help="map unknown functions onto served ones")
@click.option("--simulate", is_flag=True, help="also simulate the workload; compare side by side")
@click.option("--profiles", "profiles_path", type=click.Path(exists=True), help="for --simulate")
@click.option("--sim-policy", help="override the agent's policy for --simulate")
@click.option("--sim-cap-bytes", type=int, help="override the agent's cap for --simulate")
@click.option("--sim-workers", type=int, help="override the agent's workers for --simulate")
@click.option(
    "--sim-page-cache",
    type=click.Choice(["warm", "cold"]),
    default="warm",
    show_default=True,
    help="--profiles: loads with the model file in the page cache (as the agent reports them) "
    "or read from disk",
)
@sim_costs_option(
    "profile",
    "--profiles: simulate with the profile's load and exec times, or with those measured "
    "in this run (sizes from the profile)",
)
@click.option("--token", envvar="BRULEE_TOKEN", help="the agent's management token")
@click.option("--web", is_flag=True, help="open Locust's web UI instead of running headless")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="report directory")
def replay_command(
    workload: str,
    host: str,
    speedup: float,
    duration: float | None,
    concurrency: int,
    map_functions: bool,
    simulate: bool,
    profiles_path: str | None,
    sim_policy: str | None,
    sim_cap_bytes: int | None,
    sim_workers: int | None,
    sim_page_cache: str,
    sim_costs: str,
    token: str | None,
    web: bool,
    out: str,
) -> None:
    """Replay WORKLOAD open-loop against the agent at HOST; write reports into OUT."""
    from loadgen.replay import ReplayError, format_summary, run_replay

    if speedup <= 0:
        raise click.BadParameter("must be > 0", param_hint="--speedup")
    try:
        summary = run_replay(
            workload,
            host,
            out,
            speedup=speedup,
            duration=duration,
            map_functions=map_functions,
            web=web,
            concurrency=concurrency,
            simulate=simulate,
            profiles_path=profiles_path,
            token=token,
            sim_overrides={
                "policy": sim_policy,
                "cap_bytes": sim_cap_bytes,
                "workers": sim_workers,
                "page_cache": sim_page_cache,
                "costs": sim_costs,
            },
        )
    except (ReplayError, WorkloadError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(summary))
    click.echo(f"reports in {out} (summary.json, summary.png, report.html, locust_*.csv)")
    if summary.get("interrupted"):
        raise SystemExit(130)
