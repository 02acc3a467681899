"""A private ``redis-server`` child: the agent's embedded default and the tests' real Redis.

It listens on a Unix socket in its own directory (no TCP port at all unless one is asked for,
and then only on loopback), with append-only persistence so that accepted async jobs survive
a restart of the agent. How often the append-only file is forced to disk is the agent's
``--durability``: ``strict`` at the agent's promises (an accepted job is on disk before its
202: :mod:`agent.durable`; a Redis of the user's must force every write, :data:`DURABILITY`),
``fast`` once a second (a power loss or an OS crash may lose the last
second or two of writes; a crash of redis-server alone loses nothing that was answered:
the file was written, only not yet forced to disk).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

DURABILITY = {"strict": "always", "fast": "everysec"}  # --durability -> a user's appendfsync
# the embedded server's: under strict the agent forces the file at its promises (agent/durable.py)
EMBEDDED_APPENDFSYNC = {"strict": "no", "fast": "everysec"}
DEFAULT_DURABILITY = "strict"


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quote(value: str) -> str:
    """``value`` as a double-quoted string of redis.conf (backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class RedisServer:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager).

    ``port=None`` serves only the Unix socket ``DIR/redis.sock``; a port binds 127.0.0.1.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        port: int | None = None,
        persist: bool = True,
        password: str | None = None,
        executable: str = "redis-server",
        durability: str = DEFAULT_DURABILITY,
    ) -> None:
        self.dir = Path(directory)
        self.port = port
        self.persist = persist
        self.password = password
        self.executable = executable
        if durability not in DURABILITY:
            raise ValueError(f"durability {durability!r} is neither {' nor '.join(DURABILITY)}")
        self.durability = durability
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        secret = quote(self.password or "", safe="")
        auth = f":{secret}@" if secret else ""
        if self.port is None:
            query = f"?password={secret}" if secret else ""
            return f"unix://{self.socket_path}{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def aof_dir(self) -> Path:
        """Its append-only files (Redis 7's ``appenddirname``, default ``appendonlydir``)."""
        return self.dir / "appendonlydir"

    @property
    def config_path(self) -> Path:
        return self.dir / "redis.conf"

    def settings(self) -> list[tuple[str, str]]:
        """redis-server's configuration, as (directive, value) pairs."""
        settings = [
            ("dir", str(self.dir)),
            ("unixsocket", str(self.socket_path)),
            ("unixsocketperm", "700"),
            ("port", str(self.port or 0)),
            ("bind", "127.0.0.1"),
            ("protected-mode", "yes"),
            ("daemonize", "no"),
            ("logfile", str(self.dir / "redis.log")),
            ("save", ""),
            ("appendonly", "yes" if self.persist else "no"),
            ("appendfsync", EMBEDDED_APPENDFSYNC[self.durability]),
        ]
        if self.password:
            settings.append(("requirepass", self.password))
        return settings

    def write_config(self) -> Path:
        """Write :meth:`settings` to ``DIR/redis.conf`` (mode 0600): the password, if any, is
        read from there and never appears on a command line (``ps``, /proc/PID/cmdline)."""
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # it may have existed with another mode
        with os.fdopen(fd, "w") as fh:
            for directive, value in self.settings():
                fh.write(f"{directive} {_quote(value)}\n")
        return self.config_path

    def command(self) -> list[str]:
        exe = shutil.which(self.executable)
        if exe is None:
            raise RedisServerError(
                f"{self.executable} not found: install it (Debian/Ubuntu/Raspberry Pi OS: "
                "sudo apt-get install redis-server) or give --redis-url"
            )
        return [exe, str(self.config_path)]

    def spawn(self) -> subprocess.Popen:
        """Start redis-server on this directory and socket without waiting for it (its data
        comes back from the append-only file); :meth:`start` also waits until it answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        command = self.command()
        self.write_config()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return self.process

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.spawn()
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                log = self.dir / "redis.log"
                tail = (
                    log.read_text(errors="replace").strip().splitlines()[-3:]
                    if log.exists()
                    else []
                )
                raise RedisServerError(
                    f"redis-server exited with status {self.process.returncode}: "
                    + (err.strip() or " / ".join(tail) or "no output")
                )
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redact(url: str) -> str:
    """``url`` without its password (user info and ``password=`` query), for messages."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{k}={'***' if k == 'password' else v}" for k, v in parse_qsl(parts.query))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
