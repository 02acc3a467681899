"""``brulee up``: Redis (embedded unless given), the gunicorn gateway and N workers, as one unit.

A lock file (``flock``) in the state directory makes a second ``brulee up`` on it refuse; the
token is generated there (mode 0600) unless ``BRULEE_TOKEN`` is set. The parts run under
:mod:`agent.supervisor`, which restarts any that dies. SIGTERM/SIGINT stop the gateway and
workers first (they finish their jobs), then Redis, so nothing is orphaned.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agent import durable, forked
from agent.redis_server import DEFAULT_DURABILITY, DURABILITY, RedisServer
from agent.sizes import device_ram, parse_size
from agent.supervisor import (
    RestartPolicy,
    Slot,
    Supervisor,
    stop_processes,  # noqa: F401 (its old home: tests, testbed)
)


class AlreadyRunning(RuntimeError):
    """Another ``brulee up`` holds the state directory."""


def parse_cap(text: str) -> int:
    """``--memory-cap``: a size (agent.sizes) or ``PCT%`` of this device's total RAM."""
    return parse_size(text, what="memory cap", percent_of=device_ram, was_binary=True)


def parse_keep_alive(text: str | None):
    """``ttl:SECONDS`` (or ``keep-alive:SECONDS``), ``NAME`` or None: a proactive policy."""
    if not text or text == "none":
        return None
    from agent.policies.proactive import make_proactive

    name, _, seconds = text.partition(":")
    return make_proactive(name, **({"ttl_s": float(seconds)} if seconds else {}))


def keep_alive_loop(
    redis_url: str, proactive, stop: threading.Event, models_dir: Path, period: float = 1.0
) -> None:
    """Drive a proactive policy once a ``period`` until ``stop``: tell it of every arrival
    (the ``arrivals`` stream placement writes), unload what it finds idle, and load what it
    wants warm into free memory. With or without one, functions served by a smaller variant
    are upgraded into free memory (``agent.variant_placement.upgrade``)."""
    import redis

    from agent.keepalive import expire_idle, prewarm
    from agent.keys import key
    from agent.placement import Placement
    from agent.registry import Profiles, model_facts
    from agent.worker import connect

    conn = connect(redis_url)  # a worker's timeouts: a Redis gone silent is noticed
    placement = Placement(conn, os.environ.get("BRULEE_POLICY") or "cremebrulee")
    profiles = Profiles(models_dir)
    last_id, last_t = None, 0.0
    while not stop.wait(period):
        try:
            docs = [json.loads(raw) for raw in conn.hvals(key("functions"))]
            upgrade_variants(conn, placement, models_dir, profiles, docs)
            if proactive is None:
                continue
            if last_id is None:  # start with what arrives from now on
                newest = conn.xrevrange(key("arrivals"), count=1)
                last_id = newest[0][0] if newest else "0-0"
            for _, arrivals in conn.xread({key("arrivals"): last_id}, count=10_000) or []:
                for arrival_id, fields in arrivals:
                    # several gateways write: keep the policy's clock from going back
                    last_t = max(last_t, float(fields[b"t"]))
                    proactive.on_invocation(fields[b"m"].decode(), last_t)
                    last_id = arrival_id
            expire_idle(placement, proactive)
            facts, files = {}, {}
            failed = {name.decode() for name in conn.hkeys(key("failed"))}
            for doc in docs:
                if doc["model"] in facts or doc["name"] in failed:
                    continue
                try:
                    facts[doc["model"]], _ = model_facts(
                        conn, doc, models_dir, profiles.get(doc["model"])
                    )
                except OSError:  # its file went away: nothing to prewarm
                    continue
                files[doc["model"]] = doc["file"]
            if facts:
                prewarm(placement, proactive, facts, files)
        except redis.RedisError:  # Redis away for a moment: try again next period
            continue


def upgrade_variants(conn, placement, models_dir: Path, profiles, docs=None) -> list:
    """Upgrade, into free memory, every function served by a smaller variant (its better
    variant loaded in the background, nothing evicted): ``agent.variant_placement``.
    ``docs``: the function documents, if the caller has read them already."""
    from agent.keys import key
    from agent.registry import model_facts
    from agent.variant_placement import upgrade, variant_list

    def facts(doc: dict):
        return model_facts(conn, doc, models_dir, profiles.get(doc["model"]))[0]

    if docs is None:
        docs = [json.loads(raw) for raw in conn.hvals(key("functions"))]
    functions = [(d["name"], variant_list(d, facts)) for d in docs if d.get("variants")]
    return upgrade(placement, functions) if functions else []


def worker_argv(
    redis_url: str | None,
    models_dir: Path,
    cap: int,
    policy: str,
    device: str | None = None,
    name: str | None = None,
) -> list[str]:
    """The command line of one ``brulee worker`` process (device: the host name if None).
    ``redis_url`` None: the worker reads it from ``BRULEE_REDIS_URL`` in its environment,
    which keeps a password off the command line (``ps``, /proc/PID/cmdline)."""
    argv = [sys.executable, "-m", "agent.agent_cli", "worker"]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    if device is not None:
        argv += ["--device", device]
    if name is not None:
        argv += ["--name", name]
    return argv + ["--memory-cap", str(cap), "--policy", policy, "--models", str(models_dir)]


def gateway_threads(processes: int, max_waiting: int | None = None) -> int:
    """Threads per gateway process: a synchronous request waiting for memory holds one, so
    there must be room for a full admission queue (``max_waiting`` models, each with its
    riders: :func:`agent.admission.max_requests`) plus 8 per process for everything else —
    hits, ``/healthz``, ``/system/cache`` — or waiting requests would starve them. (Threads
    start only when needed.)"""
    from agent.admission import DEFAULT_MAX_WAITING, max_requests

    waiting = max_waiting or int(os.environ.get("BRULEE_MAX_WAITING") or DEFAULT_MAX_WAITING)
    return 8 + -(-max_requests(waiting) // max(processes, 1))


# Seconds an idle keep-alive connection stays open. gunicorn's default, 2 s, loses calls: a
# client that sends on a pooled connection just as the server closes it gets "connection
# closed" and no answer, and clients do not resend a POST (RFC 9110 9.2.2). Seen in replays
# (1 call in ~100 on a loaded machine); nginx's 75 s makes the race need a connection idle
# that long. An idle connection costs the gthread worker a file descriptor, not a thread.
HTTP_KEEP_ALIVE_S = 75


def gateway_options(host: str, port: int, processes: int) -> list[str]:
    """gunicorn's options serving the gateway, the app loaded once in its master
    (``--preload``: the workers share it); the rest comes from ``BRULEE_*`` in its env."""
    return [
        "-w", str(processes), "-k", "gthread", "--threads", str(gateway_threads(processes)),
        "-b", f"{host}:{port}", "--graceful-timeout", "10", "--preload", "--no-control-socket",
        "--keep-alive", str(HTTP_KEEP_ALIVE_S),
        "agent.gateway:create_app()",
    ]  # fmt: skip


def forget_worker(conn, name: str) -> None:
    """Remove a dead worker's copies (and its registration) from the placement accounting."""
    from agent.membership import Membership

    Membership(conn).forget_worker(name)


def check_durability(conn, redis_url: str, echo) -> None:
    """``--durability strict`` with a Redis of the user's: say so if it does not force every
    write to disk (brulee does not reconfigure a server it does not own)."""
    from agent.redis_server import redact

    try:
        got = conn.config_get("append*")
    except redis.RedisError as exc:  # CONFIG may be disabled on a managed Redis
        echo(f"brulee up: cannot check {redact(redis_url)}'s persistence ({exc}); strict "
             "durability needs appendonly yes and appendfsync always there")  # fmt: skip
        return
    if got.get("appendonly") != "yes" or got.get("appendfsync") != DURABILITY["strict"]:
        echo(f"brulee up: warning: {redact(redis_url)} has appendonly {got.get('appendonly')}, "
             f"appendfsync {got.get('appendfsync')}: accepted jobs are not on disk before "
             "their 202 (strict durability needs appendonly yes, appendfsync always)")  # fmt: skip


def lock_state_dir(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(state_dir / "brulee.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise AlreadyRunning(
            f"another `brulee up` is already running on state directory {state_dir}"
        ) from None
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def ensure_token(state_dir: Path) -> tuple[str, bool]:
    """The management token and whether it was just generated."""
    if os.environ.get("BRULEE_TOKEN"):
        return os.environ["BRULEE_TOKEN"], False
    path = state_dir / "token"
    if path.exists():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def run_up(
    port: int,
    workers: int,
    cap: int,
    policy: str,
    redis_url: str | None,
    models_dir: Path,
    functions_file: str | None,
    state_dir: Path,
    gateway_processes: int = 2,
    host: str = "127.0.0.1",
    keep_alive: str | None = None,
    echo=print,
    restart: RestartPolicy = RestartPolicy(),  # noqa: B008 (frozen)
    durability: str = DEFAULT_DURABILITY,
) -> int:
    """Run the agent under :class:`~agent.supervisor.Supervisor` until SIGTERM/SIGINT; 1 if
    the gateway or the embedded Redis is in crash loop (the agent cannot serve)."""
    proactive = parse_keep_alive(keep_alive)  # fails before anything starts
    lock = lock_state_dir(state_dir)
    keeper_stop = threading.Event()
    token, fresh = ensure_token(state_dir)
    if fresh:
        echo(f"management token (saved in {state_dir / 'token'}): {token}")
    redis_url = redis_url or os.environ.get("REDIS_URL")
    slots: list[Slot] = []
    supervisor = Supervisor(slots, state_dir, restart, echo)
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = None
    try:
        if not redis_url:
            server = RedisServer(state_dir / "redis", durability=durability).start()
            redis_url = server.url
            slots.append(
                Slot("redis", "redis", lambda _slot: server.spawn(), vital=True,
                     proc=server.process)
            )  # fmt: skip
        env = {
            **os.environ,
            "BRULEE_REDIS_URL": redis_url,  # children read it here, never from their argv
            "BRULEE_MODELS": str(models_dir),
            "BRULEE_STATE_DIR": str(state_dir),
            "BRULEE_POLICY": policy,
            "BRULEE_TOKEN": token,
            "BRULEE_DURABILITY": durability,
        }
        if functions_file:
            env["BRULEE_FUNCTIONS"] = str(functions_file)
        if server is not None and durability == "strict":  # the agent forces its own Redis' file
            env[durable.ENV] = str(server.aof_dir)
        # the supervisor's own connection: fail fast rather than retry while Redis is away
        conn = redis.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        if slots == [] and durability == "strict":
            check_durability(conn, redis_url, echo)
        host_name = socket.gethostname()
        forked.preload()

        def spawn_worker(slot: Slot) -> forked.Forked:
            slot.name = name = f"{host_name}-{slot.label}-{secrets.token_hex(3)}"

            def work() -> None:
                from agent.worker import run_worker

                lock.close()  # the child's copy: the lock stays the supervisor's alone
                run_worker(redis_url, host_name, models_dir, policy, cap, name=name)

            return forked.Forked(work, f"brulee worker {name}", env)

        def spawn_gateway(_slot: Slot) -> forked.Forked:
            def serve() -> None:
                lock.close()
                forked.run_gateway(gateway_options(host, port, gateway_processes))

            return forked.Forked(serve, "brulee gateway", env)

        for i in range(1, workers + 1):
            slots.append(
                Slot(f"w{i}", "worker", spawn_worker, lambda s: forget_worker(conn, s.name))
            )
        slots.append(Slot("gateway", "gateway", spawn_gateway, vital=True))
        supervisor.start_all()
        # with a proactive policy or not: functions served smaller are upgraded there
        threading.Thread(
            target=keep_alive_loop,
            args=(redis_url, proactive, keeper_stop, models_dir),
            daemon=True,
        ).start()
        echo(f"brulee up: http://{host}:{port} ({workers} workers, cap {cap} bytes, {policy})")
        echo(f"brulee up: status page http://{host}:{port}/status (asks for the token)")
        while not stopping:
            if not supervisor.tick():
                echo(f"brulee up: {', '.join(supervisor.crash_looping())} in crash loop; "
                     "stopping the agent")  # fmt: skip
                return 1
            time.sleep(0.2)
    finally:
        keeper_stop.set()
        supervisor.stop(timeout=20)
        lock.close()
    return 0
