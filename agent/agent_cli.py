"""CLI of the edge agent: ``brulee up``, ``brulee worker``, ``brulee invoke``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from agent.admission import max_waiting_option
from agent.memory import COLD_LOADS_ENV
from agent.redis_server import DEFAULT_DURABILITY, DURABILITY
from agent.supervisor import RestartPolicy
from agent.up import AlreadyRunning, parse_cap, run_up

models_dir_option = click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
)
# the agent's state directory (embedded Redis, token, lock), shared by `up` and `invoke`
state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".brulee"),
    show_default=True,
)

cold_loads_option = click.option(
    "--cold-loads",
    is_flag=True,
    envvar=COLD_LOADS_ENV,
    help="When a model copy is released, drop its file from the OS page cache too, as a device "
    "whose memory is full would: its next load reads from storage, not from RAM "
    f"[env: {COLD_LOADS_ENV}=1].",
)


def _cap(_ctx, _param, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_cap(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _callback_allow(_ctx, _param, value: str | None) -> str | None:
    from agent.callbacks import CallbackPolicy

    if value is not None:
        try:
            CallbackPolicy.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


def _policy(_ctx, _param, value: str) -> str:
    """A policy spec is checked before anything starts (the processes would crash-loop)."""
    from agent.policies import make_policy, parse_policy_spec

    try:
        name, options = parse_policy_spec(value)
        make_policy(name, **options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


policy_option = click.option(
    "--policy",
    default="cremebrulee",
    show_default=True,
    callback=_policy,
    help="Eviction policy, options after the name: cremebrulee:cost=increase, lru:trim=off "
    "(see `brulee policies`).",
)


@click.command("up")
@click.option("--port", default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--workers", type=int, default=None, help="Workers (default: one per core).")
@click.option(
    "--gateway-processes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="gunicorn processes of the gateway (each with threads). One saves ~4 MiB idle and "
    "~10 MiB once it has served, and as many hits of real models per second, but 0.66-0.98x "
    "those of a trivial model on this 2-core machine (benchmarks/footprint.py).",
)
@click.option(
    "--memory-cap",
    default="50%",
    show_default=True,
    callback=_cap,
    help="A size (bytes; 400MB = 400×10^6, 400MiB = 400×2^20) or PCT% of this device's total "
    "RAM. A bare K/M/G is refused: it meant 2^10/2^20/2^30 here before.",
)
@policy_option
@click.option(
    "--keep-alive",
    default=None,
    help="Proactive policy: ttl:SECONDS (unload models idle that long), histogram (unload "
    "idle models, load them back before their predicted next request) or warming (fill free "
    "memory with the unloaded models of highest utility). See `brulee policies`.",
)
@click.option(
    "--redis-url",
    default=None,
    help="Use this Redis instead of an embedded one  [default: $REDIS_URL] (with a password, "
    "prefer the environment: a command line is visible to every user in `ps`).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=RestartPolicy.limit,
    show_default=True,
    help="A worker (or the gateway, or the embedded Redis) that dies more than this many times "
    "within --restart-window is in crash loop and not restarted again.",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    default=RestartPolicy.window,
    show_default=True,
    help="Seconds (see --max-restarts).",
)
@models_dir_option
@click.option("--functions", "functions_file", default=None, help="stack.yml (default: all models)")
@state_dir_option
@max_waiting_option(
    "Models that may wait for memory per device (requests for a model already waiting ride "
    "along, up to 8 per model allowed); past that, 429.",
    minimum=1,
)
@click.option(
    "--sync-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds a synchronous call may take, waiting for memory included (a request's "
    "X-Deadline-Ms header may shorten it).",
)
@click.option(
    "--callback-allow",
    envvar="BRULEE_CALLBACK_ALLOW",
    default=None,
    callback=_callback_allow,
    help="Hosts and CIDR networks (comma-separated) that X-Callback-Url may reach although "
    "they are loopback, private, link-local, ... (default: public hosts only) "
    "[env: BRULEE_CALLBACK_ALLOW]",
)
@click.option(
    "--durability",
    envvar="BRULEE_DURABILITY",
    type=click.Choice(sorted(DURABILITY)),
    default=DEFAULT_DURABILITY,
    show_default=True,
    help="strict: an accepted async job is on disk before its 202 (the agent forces the "
    "embedded Redis' append-only file before each 202 and after each job's end, not per "
    "write); fast: forced once a second, so a power loss or OS crash may lose the last second "
    "or two of accepted jobs (see docs/agent.md).",
)
@cold_loads_option
def up_command(
    port,
    host,
    workers,
    gateway_processes,
    memory_cap,
    policy,
    keep_alive,
    redis_url,
    max_restarts,
    restart_window,
    models_dir,
    functions_file,
    state_dir,
    max_waiting,
    sync_timeout,
    callback_allow,
    durability,
    cold_loads,
) -> None:
    """Start Redis, the gateway and the workers, restart any that dies (with backoff); stop all
    of them on SIGTERM/SIGINT."""
    # the gateway and the workers (which admit waiting requests too) read them from here
    os.environ["BRULEE_MAX_WAITING"] = str(max_waiting)
    os.environ["BRULEE_SYNC_TIMEOUT"] = str(sync_timeout)
    if callback_allow is not None:
        os.environ["BRULEE_CALLBACK_ALLOW"] = callback_allow
    if cold_loads:
        os.environ[COLD_LOADS_ENV] = "1"
    try:
        sys.exit(
            run_up(
                port,
                workers or os.cpu_count() or 1,
                memory_cap,
                policy,
                redis_url,
                models_dir.resolve(),
                functions_file,
                state_dir.resolve(),
                gateway_processes=gateway_processes,
                host=host,
                keep_alive=keep_alive,
                echo=click.echo,
                restart=RestartPolicy(limit=max_restarts, window=restart_window),
                durability=durability,
            )
        )
    except (AlreadyRunning, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("worker")
@click.option(
    "--redis-url",
    envvar=["BRULEE_REDIS_URL", "REDIS_URL"],
    required=True,
    help="[default: $BRULEE_REDIS_URL, else $REDIS_URL] (with a password, prefer the "
    "environment: a command line is visible to every user in `ps`)",
)
@click.option("--device", default=None, help="Device name (default: host name).")
@click.option("--name", default=None, help="Worker name, unique (default: generated).")
@click.option(
    "--memory-cap",
    default=None,
    callback=_cap,
    help="A size (400MB, 400MiB) or PCT% of this device's total RAM.",
)
@policy_option
@models_dir_option
@cold_loads_option
def worker_command(redis_url, device, name, memory_cap, policy, models_dir, cold_loads) -> None:
    """Run one RQ worker that keeps interpreters warm (for systemd or other devices)."""
    import socket

    from agent.worker import run_worker

    run_worker(redis_url, device or socket.gethostname(), models_dir, policy, memory_cap,
               name=name, cold_loads=cold_loads)  # fmt: skip


@click.command("invoke")
@click.argument("name")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--random", "random_input", is_flag=True, help="send a random input of the right shape"
)
@click.option("--url", default="http://127.0.0.1:8080", show_default=True)
@click.option(
    "--token",
    envvar="BRULEE_TOKEN",
    help="management token, for --random  [default: $BRULEE_TOKEN, else STATE_DIR/token]",
)
@state_dir_option
def invoke_command(
    name: str, file: Path | None, random_input: bool, url: str, token: str | None, state_dir: Path
) -> None:
    """POST FILE (or, with --random, an input of the right shape) to function NAME; print the
    result and the cache headers."""
    import requests

    if (file is None) == (not random_input):
        raise click.UsageError("give either FILE or --random")
    try:
        if random_input:
            body, ctype = _random_input(name, url, token, state_dir)
        else:
            body, ctype = file.read_bytes(), _content_type(file)
        resp = requests.post(
            f"{url}/function/{name}", data=body, headers={"Content-Type": ctype}, timeout=120
        )
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach the agent at {url}: {exc}") from None
    for header in ("X-Cache", "X-Load-Seconds", "X-Exec-Seconds", "X-Queue-Seconds", "X-Worker"):
        if header in resp.headers:
            click.echo(f"{header}: {resp.headers[header]}")
    try:
        click.echo(json.dumps(resp.json(), indent=2))
    except ValueError:
        click.echo(resp.text)
    if not resp.ok:
        sys.exit(1)


def _content_type(file: Path) -> str:
    types = {
        ".json": "application/json",
        ".npy": "application/x-npy",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
    }
    return types.get(file.suffix.lower(), "application/octet-stream")


def _random_input(name: str, url: str, token: str | None, state_dir: Path) -> tuple[bytes, str]:
    """A valid random body for ``name``, from what ``/system/functions`` says of it."""
    import requests

    from loadgen.replay_payloads import build_payloads

    if token is None and (state_dir / "token").exists():
        token = (state_dir / "token").read_text().strip()
    if token is None:
        raise click.UsageError(
            "--random reads the function's input shape from /system/functions, which needs "
            "the management token: pass --token, set BRULEE_TOKEN, or --state-dir "
            f"(there is no {state_dir}/token)"
        )
    resp = requests.get(
        f"{url}/system/functions", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    if not resp.ok:
        raise click.ClickException(f"/system/functions answered {resp.status_code}: {resp.text}")
    functions = {f["name"]: f for f in resp.json()["functions"]}
    if name not in functions:
        raise click.ClickException(
            f"function {name!r} is not deployed; deployed: {', '.join(sorted(functions))}"
        )
    return build_payloads([functions[name]])[name]


if __name__ == "__main__":
    click.Group(commands=[up_command, worker_command, invoke_command])()
