"""A fleet of brulee devices on one machine: each *host* a Linux network namespace.

brulee's answer to outgrowing one device is several devices' workers on one Redis, each
device with its own cap. This module builds that on one machine so that tests and
``benchmarks/fleet.py`` run it for real, over TCP between hosts that share nothing but the
kernel: a *controller* namespace runs ``redis-server`` with a password (``requirepass``)
bound to its own address; each device namespace runs ``brulee worker --device NAME
--memory-cap …``; the gateway (gunicorn, as the systemd unit runs it) has a namespace of its
own. Every host also gets its own host name and its own ``/dev/shm`` (a private tmpfs), so the
gateway's input spool is not shared with any worker, as between real devices: inputs travel
inline, through Redis.

Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for benchmarking, and exist only
inside these namespaces: the hosts hang off a bridge in the controller namespace; nothing is
routed to or from the machine's own network, and no other address is ever a target. The test
process itself stays in its own namespace: it reaches Redis through a Unix socket the server
also listens on (mode 0700, in a private directory) and the gateway over HTTP from threads
that joined the gateway's namespace (``setns``, which applies to the calling thread only).

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), ``ip`` (iproute2), ``unshare`` and ``redis-server``;
:func:`unavailable` says why not when they are missing. Namespaces left behind by a process
that died are removed by the next :class:`Fleet`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

PREFIX = "brf"  # namespaces brf<pid>-<fleet>-<host>; veth pairs bf<pid><fleet><n>a/b at first
SUBNET = "198.18.0"  # /24 inside 198.18.0.0/15 (RFC 2544 benchmarking range)
CONTROLLER_ADDR = f"{SUBNET}.1"
GATEWAY_ADDR = f"{SUBNET}.2"
REDIS_PORT = 6379
GATEWAY_PORT = 8080
CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parents[1]
# every host runs its commands with its own host name and a private /dev/shm ("$0": the name)
HOST_SHELL = 'mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm && hostname "$0" && exec "$@"'


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    for tool in ("ip", "unshare", "redis-server"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete the namespaces of fleets whose process is gone."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0]
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _run("ip", "netns", "del", name, check=False)


@dataclass
class Host:
    """One namespace: its name for people (``hostname`` inside), namespace and address."""

    name: str
    ns: str
    addr: str
    procs: list[subprocess.Popen] = field(default_factory=list)


@dataclass
class Device:
    """A device: the command line of each of its workers and their environment (the Redis URL
    travels in the environment, never on a command line)."""

    name: str
    argv: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def worker_device(name: str, cap: int, models: Path, policy: str, workers: int = 1) -> Device:
    """A device running ``workers`` × ``brulee worker --device NAME --memory-cap CAP``."""
    argv = [sys.executable, "-m", "agent.agent_cli", "worker", "--device", name,
            "--memory-cap", str(cap), "--policy", policy, "--models", str(models)]  # fmt: skip
    return Device(name, [argv] * workers)


class Fleet:
    """Start with ``with Fleet(...) as fleet``: Redis, the devices' workers, the gateway;
    everything (processes, namespaces) is removed on the way out, also on failure.

    ``devices``: what each device runs; ``redis_host``: the device whose namespace runs Redis
    (default: a controller namespace of its own); ``gateway_env``: more environment for the
    gateway (``BRULEE_*`` settings of ``agent.gateway.create_app``); ``prepare``: called once
    the hosts and their network exist, before anything starts (it may fill in ``devices``);
    ``redis_settings``: redis.conf lines (``bind``, ``port``, ``requirepass``) instead of
    the defaults (the Redis host's address, :data:`REDIS_PORT`, ``password``)."""

    _made = 0  # fleets made by this process (their namespaces' names differ)

    def __init__(
        self,
        devices: list[Device],
        models: Path,
        workdir: Path | None = None,
        policy: str = "cremebrulee",
        password: str | None = None,
        token: str = "fleet-token",
        redis_host: str | None = None,
        gateway_env: dict[str, str] | None = None,
        client_threads: int = 32,
        prepare: Callable[[Fleet], None] | None = None,
        redis_settings: dict[str, str] | None = None,
    ) -> None:
        self.devices = {d.name: d for d in devices}
        self.models, self.policy, self.token = Path(models), policy, token
        self.password = password or secrets.token_hex(16)
        self.gateway_env = gateway_env or {}
        self.prepare, self.redis_settings = prepare, redis_settings or {}
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="brulee-fleet-")
        self.dir = Path(workdir or self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        Fleet._made += 1
        tag = f"{PREFIX}{os.getpid()}-{Fleet._made}"
        self._veth = f"bf{os.getpid()}{Fleet._made}"
        names = ["controller"] if redis_host is None else []
        names += [*self.devices, "gateway"]
        self.hosts: dict[str, Host] = {}
        addrs = {"controller": CONTROLLER_ADDR, "gateway": GATEWAY_ADDR}
        for i, name in enumerate(names):
            addr = addrs.get(name, f"{SUBNET}.{10 + i}")
            self.hosts[name] = Host(name, f"{tag}-{name}"[:40], addr)
        self.redis_host = self.hosts[redis_host or "controller"]
        if redis_host is not None:  # the Redis host of an inventory keeps the bridge
            self.redis_host.addr = CONTROLLER_ADDR
            for i, name in enumerate(n for n in names if n not in (redis_host, "gateway")):
                self.hosts[name].addr = f"{SUBNET}.{11 + i}"
        self.url = f"http://{GATEWAY_ADDR}:{GATEWAY_PORT}"
        self.redis_url = f"redis://:{self.password}@{self.redis_host.addr}:{REDIS_PORT}/0"
        self.socket = self.dir / "redis.sock"
        self._client_threads = client_threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: redis.Redis | None = None
        self._server: subprocess.Popen | None = None

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        remove_stale()
        try:
            self._network()
            if self.prepare is not None:
                self.prepare(self)
            self._redis()
            for device in self.devices:
                self.start_device(device)
            self._gateway()
            self.wait_for_workers(sum(len(d.argv) for d in self.devices.values()))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, delete every namespace (and with them the links)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        # the gateway and the workers first (they tell Redis they stop), Redis last
        self._stop([p for h in self.hosts.values() for p in h.procs if p is not self._server])
        self._stop([self._server] if self._server is not None else [])
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.ns, check=False)
        if self._tmp is not None:
            self._tmp.cleanup()

    @staticmethod
    def _stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _network(self) -> None:
        """A bridge in the Redis host's namespace; one veth pair from it to every other host."""
        hub = self.redis_host
        for host in self.hosts.values():
            _run("ip", "netns", "add", host.ns)
            _run("ip", "-n", host.ns, "link", "set", "lo", "up")
        _run("ip", "-n", hub.ns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub.ns, "addr", "add", f"{hub.addr}/24", "dev", "br0")
        _run("ip", "-n", hub.ns, "link", "set", "br0", "up")
        # default routes lead only onto the bridge (hosts' facts name their address by them)
        _run("ip", "-n", hub.ns, "route", "add", "default", "dev", "br0")
        for n, host in enumerate(h for h in self.hosts.values() if h is not hub):
            a, b = f"{self._veth}{n}a"[-15:], f"{self._veth}{n}b"[-15:]
            _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _run("ip", "link", "set", a, "netns", host.ns)
            _run("ip", "link", "set", b, "netns", hub.ns)
            _run("ip", "-n", host.ns, "link", "set", a, "name", "eth0")
            _run("ip", "-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            _run("ip", "-n", host.ns, "link", "set", "eth0", "up")
            _run("ip", "-n", hub.ns, "link", "set", b, "master", "br0", "up")
            _run("ip", "-n", host.ns, "route", "add", "default", "via", hub.addr)

    def spawn(self, host: str, argv: list[str], env: dict[str, str] | None = None,
              log: str | None = None) -> subprocess.Popen:  # fmt: skip
        """Run ``argv`` on ``host`` (its namespace, host name and /dev/shm); the process id is
        the command's own (every wrapper execs)."""
        h = self.hosts[host]
        full = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.dir / f"{log or host}.log", "ab") as out:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    h.ns,
                    "unshare",
                    "--mount",
                    "--uts",
                    "sh",
                    "-c",
                    HOST_SHELL,
                    h.name,
                    *argv,
                ],  # fmt: skip
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        h.procs.append(proc)
        return proc

    def _redis(self) -> None:
        conf = self.dir / "redis.conf"
        settings = {"bind": f"{self.redis_host.addr} 127.0.0.1", "port": str(REDIS_PORT),
                    "requirepass": self.password, **self.redis_settings}  # fmt: skip
        self.password = settings["requirepass"]
        lines = [f"{k} {v}" for k, v in settings.items()]
        lines += [f"unixsocket {self.socket}", "unixsocketperm 700", 'save ""', "appendonly no",
                  f"dir {self.dir}"]  # fmt: skip
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self._server = self.spawn(self.redis_host.name, ["redis-server", str(conf)], log="redis")
        deadline = time.monotonic() + 10
        while True:
            try:
                self.redis().ping()
                return
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: see {self.dir}/redis.log"
                    ) from None
                time.sleep(0.05)

    def _gateway(self) -> None:
        env = {
            "BRULEE_REDIS_URL": self.redis_url,
            "BRULEE_MODELS": str(self.models),
            "BRULEE_TOKEN": self.token,
            "BRULEE_POLICY": self.policy,
            **self.gateway_env,
        }
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"{GATEWAY_ADDR}:{GATEWAY_PORT}",
                "--workers", "1", "--worker-class", "gthread", "--threads", "32",
                "--graceful-timeout", "5", "agent.gateway:create_app()"]  # fmt: skip
        self.spawn("gateway", argv, env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get("/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: see {self.dir}/gateway.log")
            time.sleep(0.2)

    # -- devices ------------------------------------------------------------------------------

    def start_device(self, device: str) -> None:
        d = self.devices[device]
        own = {"BRULEE_REDIS_URL", "REDIS_URL"} & set(d.env)  # its own (rendered) URL
        env = {**({} if own else {"BRULEE_REDIS_URL": self.redis_url}), **d.env}
        for argv in d.argv:
            self.spawn(device, argv, env)

    def kill_device(self, device: str) -> None:
        """Kill every process of the device at once (SIGKILL: no goodbye to Redis)."""
        procs = self.hosts[device].procs
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            proc.wait()
        procs.clear()

    def signal_device(self, device: str, sig: int) -> None:
        for proc in self.hosts[device].procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def link(self, device: str, up: bool) -> None:
        """Cut (or restore) the device's only link: ``ip link set eth0 down`` inside it."""
        _run("ip", "-n", self.hosts[device].ns, "link", "set", "eth0", "up" if up else "down")

    def workers(self) -> dict[str, str]:
        """Registered workers → their device (read through the Unix socket)."""
        conn = self.redis()
        names = sorted(n.decode() for n in conn.smembers("brulee:workers"))
        return {n: (conn.hget(f"brulee:worker:{n}", "device") or b"?").decode() for n in names}

    def wait_for_workers(self, n: int, timeout: float = 60.0, device: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            devices = list(self.workers().values())
            if (devices.count(device) if device else len(devices)) >= n:
                return
            dead = [h.name for h in self.hosts.values() for p in h.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(f"== {h}.log:\n{self.log_tail(h)}" for h in self.devices)
                why = f"processes of {dead} exited" if dead else f"not within {timeout:g} s"
                raise TimeoutError(f"{n} workers did not register: {why}\n{tails}")
            time.sleep(0.1)

    def log_tail(self, host: str, chars: int = 1500) -> str:
        path = self.dir / f"{host}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- clients --------------------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        """A client of the fleet's Redis, through its Unix socket (from this namespace)."""
        if self._conn is None:
            self._conn = redis.Redis(unix_socket_path=str(self.socket), password=self.password)
        return self._conn

    def _join_gateway_ns(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.hosts['gateway'].ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the gateway's namespace failed")
        finally:
            os.close(fd)

    def submit(self, method: str, path: str, **kwargs: Any) -> concurrent.futures.Future:
        """An HTTP request to the gateway, sent from a thread inside the gateway's namespace."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._client_threads, "fleet-client", initializer=self._join_gateway_ns
            )
        kwargs.setdefault("timeout", 60)
        return self._pool.submit(requests.request, method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.submit("GET", path, **kwargs).result()

    def cache(self) -> dict:
        """``/system/cache`` (with the token)."""
        resp = self.get("/system/cache", headers={"Authorization": f"Bearer {self.token}"})
        resp.raise_for_status()
        return resp.json()

    def run_in(self, host: str, argv: list[str], env: dict[str, str] | None = None,
               timeout: float = 600) -> int:  # fmt: skip
        """Run a command on a host to its end (e.g. a load generator on the gateway's host)."""
        proc = self.spawn(host, argv, env, log=f"{host}-run")
        try:
            return proc.wait(timeout)
        finally:
            self.hosts[host].procs.remove(proc)
