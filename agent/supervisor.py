"""The supervisor of ``brulee up``: it restarts the parts of the agent that die.

Every part is a :class:`Slot` (a worker slot ``w1``, ``w2``…, the gateway, the embedded
Redis) holding at most one process. When a slot's process exits for any reason (a signal, the
kernel's OOM killer, a crash inside the interpreter, an exit) while the agent is not stopping,
the supervisor logs how it ended, runs the slot's clean-up (a worker's: remove its copies from
the placement accounting) and starts a new process after an exponential backoff
(:class:`RestartPolicy`). A slot that dies more than ``limit`` times within ``window`` seconds is
in *crash loop*: it is not restarted again; the rest keeps serving. Its state is written to
``STATE_DIR/supervisor.json`` on every change, which ``/healthz`` reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

STATUS_FILE = "supervisor.json"
RUNNING, BACKOFF, CRASH_LOOP, STOPPING = "running", "backoff", "crash-loop", "stopping"


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after ``first`` seconds, doubling up to ``cap``; back to ``first`` once the
    process has run ``stable`` seconds; more than ``limit`` deaths within ``window`` seconds is
    a crash loop."""

    first: float = 0.5
    cap: float = 30.0
    stable: float = 30.0
    limit: int = 5
    window: float = 60.0


def describe_exit(code: int) -> str:
    """How a process ended, from its ``Popen.returncode``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by {name} (also what the kernel's OOM killer sends)"
    return f"killed by {name}"


@dataclass
class Slot:
    """One supervised process. ``spawn(slot)`` starts it (and may set ``slot.name``);
    ``cleanup(slot)``, if given, runs after a death and before the next start; a
    ``redis.RedisError`` there (Redis is away too) retries it on the next tick. ``vital``: the
    agent cannot serve without it (the gateway, the embedded Redis)."""

    label: str
    kind: str  # "worker", "gateway" or "redis"
    spawn: Callable[[Slot], subprocess.Popen]
    cleanup: Callable[[Slot], None] | None = None
    vital: bool = False
    name: str | None = None
    proc: subprocess.Popen | None = None
    state: str = BACKOFF
    restarts: int = 0
    last_exit: str | None = None
    delay: float = 0.0
    next_start: float = 0.0
    started_at: float = 0.0
    dirty: bool = False  # cleanup still due
    deaths: deque = field(default_factory=deque)

    def title(self) -> str:
        """``worker w1 (NAME, pid N)``, ``gateway (pid N)``: for the log."""
        what = f"worker {self.label}" if self.kind == "worker" else self.kind
        return f"{what} ({self.name + ', ' if self.name else ''}pid {self.proc.pid})"

    def status(self) -> dict[str, Any]:
        doc = {
            "pid": self.proc.pid if self.state == RUNNING and self.proc else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }
        if self.kind == "worker":
            doc = {"slot": self.label, "name": self.name, **doc}
        return doc


class Supervisor:
    """Start the slots, watch them with :meth:`tick`, stop them with :meth:`stop`."""

    def __init__(
        self,
        slots: list[Slot],
        state_dir: Path,
        policy: RestartPolicy = RestartPolicy(),  # noqa: B008 (frozen)
        echo: Callable[[str], Any] = print,
    ) -> None:
        self.slots = slots
        self.path = Path(state_dir) / STATUS_FILE
        self.policy = policy
        self.echo = echo

    def start(self, slot: Slot) -> None:
        slot.proc = slot.spawn(slot)
        slot.state, slot.started_at = RUNNING, time.monotonic()

    def start_all(self) -> None:
        """Start every slot (one given with its process already started is just watched)."""
        for slot in self.slots:
            slot.delay = self.policy.first
            if slot.proc is None:
                self.start(slot)
            else:
                slot.state, slot.started_at = RUNNING, time.monotonic()
        self.write_status()

    def tick(self) -> bool:
        """One look at every slot: note deaths, restart what is due. Returns False when a
        vital slot is in crash loop (the agent cannot serve; the caller stops it)."""
        changed = False
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == RUNNING and slot.proc.poll() is not None:  # poll() reaps it
                self._died(slot, now)
                changed = True
            elif slot.state == BACKOFF and now >= slot.next_start:
                changed |= self._restart(slot)
            elif slot.state == CRASH_LOOP:
                self._cleanup(slot)
        if changed:
            self.write_status()
        return not any(s.vital and s.state == CRASH_LOOP for s in self.slots)

    def _died(self, slot: Slot, now: float) -> None:
        slot.last_exit = describe_exit(slot.proc.returncode)
        policy = self.policy
        if now - slot.started_at >= policy.stable:
            slot.delay = policy.first
        slot.deaths.append(now)
        while slot.deaths and slot.deaths[0] < now - policy.window:
            slot.deaths.popleft()
        slot.dirty = slot.cleanup is not None
        who = slot.title()
        if len(slot.deaths) > policy.limit:
            slot.state = CRASH_LOOP
            self._cleanup(slot)
            self.echo(
                f"brulee up: {who} {slot.last_exit}; it died {len(slot.deaths)} times within "
                f"{policy.window:g} s: crash loop, not restarting it"
                + ("" if slot.vital else " (the agent serves on, degraded)")
            )
            return
        slot.state, slot.next_start = BACKOFF, now + slot.delay
        self.echo(f"brulee up: {who} {slot.last_exit}; restarting it in {slot.delay:g} s")
        slot.delay = min(slot.delay * 2, policy.cap)
        self._cleanup(slot)

    def _cleanup(self, slot: Slot) -> None:
        if not slot.dirty:
            return
        try:
            slot.cleanup(slot)
            slot.dirty = False
        except redis.RedisError:  # Redis is away too: try again on the next tick
            pass

    def _restart(self, slot: Slot) -> bool:
        self._cleanup(slot)
        if slot.dirty:  # the dead one's accounting must go before its replacement comes
            return False
        try:
            self.start(slot)
        except OSError as exc:  # e.g. out of processes or memory: a death like any other
            slot.proc = None
            self.echo(f"brulee up: cannot start {slot.label}: {exc}")
            slot.next_start = time.monotonic() + slot.delay
            slot.delay = min(slot.delay * 2, self.policy.cap)
            return False
        slot.restarts += 1
        self.echo(f"brulee up: restarted {slot.title()}")
        return True

    def crash_looping(self) -> list[str]:
        return [s.label for s in self.slots if s.state == CRASH_LOOP]

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"pid": os.getpid(), "updated_at": time.time(), "workers": []}
        for slot in self.slots:
            if slot.kind == "worker":
                doc["workers"].append(slot.status())
            else:
                doc[slot.kind] = slot.status()
        doc.setdefault("redis", None)  # an external Redis: not ours to supervise
        doc["crash_loop"] = self.crash_looping()
        return doc

    def write_status(self) -> None:
        """Replace ``supervisor.json`` atomically (readers never see half a file)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.status(), indent=1))
        os.replace(tmp, self.path)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every process (none is restarted any more): the others first, then the vital
        slots that they need last (Redis), so jobs finish and the append-only file is flushed."""
        for slot in self.slots:
            slot.state = STOPPING
        self.write_status()
        last = [s.proc for s in self.slots if s.kind == "redis" and s.proc]
        stop_processes([s.proc for s in self.slots if s.kind != "redis" and s.proc], timeout)
        stop_processes(last, timeout)
        self.path.unlink(missing_ok=True)


def stop_processes(processes: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM every process still running, then wait for each; kill what outlives
    ``timeout`` seconds."""
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_status(state_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """What the supervisor of ``state_dir`` last wrote (None: no supervisor there)."""
    if not state_dir:
        return None
    try:
        return json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
