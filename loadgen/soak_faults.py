"""The soak test's faults (``benchmarks/soak.py``), injected for real into a running
``brulee up``, each followed by a check that the agent recovered and how long it took.

Kinds: ``kill_worker`` (SIGKILL), ``stop_worker`` (SIGSTOP for a while, then SIGCONT),
``kill_redis`` (SIGKILL of the embedded redis-server), ``load_raises`` (a function deployed
while its model file is valid, the file replaced with garbage before its first call) and
``corrupt_model`` (a file of random bytes deployed and called). The two model faults work on
the agent's models directory, which must be a scratch copy: they add files and catalog records
there and remove them afterwards.

Recovered means: ``/healthz`` answers with all the workers, the worker pids (and Redis's) are
new where the fault killed one, a call of a healthy function answers 200, and for the model
faults, their call was answered with a cause and the function is listed as failed.

Pids come from ``STATE_DIR/supervisor.json`` (written by ``brulee up``'s supervisor), else
from ``/system/cache``'s per-worker ``pid``, else from the process tree under the
``brulee up`` process (its pid is in ``STATE_DIR/brulee.lock``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from loadgen.soak_load import agent_session, classify, unanswered

KINDS = ("load_raises", "corrupt_model", "stop_worker", "kill_worker", "kill_redis")


@dataclass
class Pids:
    workers: dict[str, int]  # worker (slot) name -> pid
    redis: int | None
    source: str


@dataclass
class Fault:
    kind: str
    at_s: float  # since the start of the load
    target: str = ""
    injected: bool = False
    recovered: bool | None = None
    recover_s: float | None = None  # from the fault's end (SIGCONT for stop_worker)
    detail: list[str] = field(default_factory=list)


def _pid_of(node: object) -> int | None:
    if isinstance(node, dict):
        node = node.get("pid")
    return int(node) if isinstance(node, (int, str)) and str(node).isdigit() else None


def supervisor_pids(state_dir: Path) -> Pids | None:
    """``supervisor.json``: worker slots (a list or a mapping of ``{name, pid}``) and Redis's
    pid (``redis_pid``, or ``redis: {pid}``/``redis: PID``)."""
    try:
        doc = json.loads((state_dir / "supervisor.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    slots = doc.get("workers") or doc.get("slots") or []
    if isinstance(slots, dict):
        slots = [
            {"name": k, **(v if isinstance(v, dict) else {"pid": v})} for k, v in slots.items()
        ]
    workers = {}
    for i, slot in enumerate(slots):
        pid = _pid_of(slot)
        if pid:
            workers[str(slot.get("name") or slot.get("slot") or i)] = pid
    redis_pid = _pid_of(doc.get("redis_pid")) or _pid_of(doc.get("redis"))
    return Pids(workers, redis_pid, "supervisor.json")


def up_pid(state_dir: Path) -> int | None:
    """The ``brulee up`` process (it writes its pid into the lock file it holds)."""
    try:
        return int((state_dir / "brulee.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return False


def descendants(root: int) -> list[tuple[int, str, list[str]]]:
    """(pid, name, argv) of ``root``'s descendants: psutil when installed, else ``/proc``."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        out = []
        try:
            children = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            return []
        for proc in children:
            try:
                out.append((proc.pid, proc.name(), proc.cmdline()))
            except psutil.Error:
                continue
        return out
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        table[int(entry.name)] = (int(rest.split()[1]), name, [a for a in argv if a])
    found, frontier = [], {root}
    while frontier:
        level = [(pid, n, a) for pid, (ppid, n, a) in table.items() if ppid in frontier]
        found += level
        frontier = {pid for pid, _, _ in level}
    return found


def tree_pids(root: int | None) -> Pids:
    """Workers (``brulee worker NAME``, forked by ``brulee up``, or ``agent_cli worker``) and
    ``redis-server`` among ``root``'s descendants."""
    workers, redis_pid = {}, None
    for pid, name, argv in descendants(root) if root else []:
        if name == "redis-server":  # it rewrites its command line
            redis_pid = pid
        elif " ".join(argv).startswith("brulee worker ") or (
            "agent.agent_cli" in argv and "worker" in argv
        ):
            workers[f"pid-{pid}"] = pid
    return Pids(workers, redis_pid, "process tree")


class Injector:
    """Injects faults on a schedule; ``faults`` keeps one record per fault."""

    def __init__(
        self,
        url: str,
        token: str,
        state_dir: Path,
        models_dir: Path,
        workers: int,
        payloads: dict[str, tuple[bytes, str]],
        probe: str,
        t0: float,
        recover_timeout: float = 30.0,
        stop_seconds: float = 10.0,
    ) -> None:
        self.url, self.state_dir, self.models_dir = url, state_dir, models_dir
        self.workers, self.payloads, self.probe, self.t0 = workers, payloads, probe, t0
        self.recover_timeout, self.stop_seconds = recover_timeout, stop_seconds
        self.session = agent_session(token)
        self.faults: list[Fault] = []
        self.stopped: set[int] = set()  # pids under SIGSTOP right now
        self.up = up_pid(state_dir)
        self._n = 0

    # -- processes ------------------------------------------------------------------------

    def pids(self) -> Pids:
        found = supervisor_pids(self.state_dir)
        if found and found.workers:
            return found
        try:
            cache = self.session.get(self.url + "/system/cache", timeout=2).json()
            workers = {
                name: int(w["pid"])
                for d in cache["devices"].values()
                for name, w in d["workers"].items()
                if w.get("pid")
            }
        except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
            workers = {}
        tree = tree_pids(self.up)
        if workers:
            return Pids(workers, (found and found.redis) or tree.redis, "/system/cache")
        return Pids(tree.workers, (found and found.redis) or tree.redis, tree.source)

    def agent_running(self) -> bool:
        return alive(self.up)

    # -- the schedule ---------------------------------------------------------------------

    def run(
        self, kinds: list[str], first: float, every: float, end: float, stop: threading.Event
    ) -> None:
        """Inject ``kinds`` in rotation from ``first`` s, every ``every`` s (later if a
        recovery takes longer), none after ``end`` s."""
        due, i = first, 0
        while kinds:
            wait = self.t0 + due - time.monotonic()
            if due > end or (wait > 0 and stop.wait(wait)) or stop.is_set():
                return
            self.inject(kinds[i % len(kinds)], stop)
            i += 1
            due = max(due + every, time.monotonic() - self.t0)

    def inject(self, kind: str, stop: threading.Event) -> Fault:
        fault = Fault(kind, round(time.monotonic() - self.t0, 1))
        self.faults.append(fault)
        if not self.agent_running():
            fault.detail.append("not injected: the `brulee up` process has exited")
            return fault
        self._n += 1
        before = self.pids()
        try:
            getattr(self, kind)(fault, before, stop)
        except (OSError, requests.RequestException) as exc:
            fault.detail.append(f"injection failed: {exc.__class__.__name__}: {exc}")
        return fault

    def resume_all(self) -> None:
        """SIGCONT every process still stopped (at the end, whatever happened)."""
        for pid in list(self.stopped):
            _signal(pid, signal.SIGCONT)
            self.stopped.discard(pid)

    # -- the faults -----------------------------------------------------------------------

    def _victim(self, fault: Fault, pids: Pids) -> int | None:
        if not pids.workers:
            fault.detail.append(
                "not injected: no worker pid found (supervisor.json, "
                "/system/cache and the process tree all came up empty)"
            )
            return None
        name = sorted(pids.workers)[self._n % len(pids.workers)]
        fault.target = f"worker {name} pid {pids.workers[name]} ({pids.source})"
        return pids.workers[name]

    def kill_worker(self, fault: Fault, before: Pids, stop: threading.Event) -> None:
        pid = self._victim(fault, before)
        if pid and _signal(pid, signal.SIGKILL):
            fault.injected = True
            self._recovery(fault, time.monotonic(), gone=pid)

    def stop_worker(self, fault: Fault, before: Pids, stop: threading.Event) -> None:
        pid = self._victim(fault, before)
        if not pid or not _signal(pid, signal.SIGSTOP):
            return
        fault.injected = True
        self.stopped.add(pid)
        stop.wait(self.stop_seconds)
        _signal(pid, signal.SIGCONT)
        self.stopped.discard(pid)
        fault.detail.append(f"stopped {self.stop_seconds:g} s")
        self._recovery(fault, time.monotonic())

    def kill_redis(self, fault: Fault, before: Pids, stop: threading.Event) -> None:
        if not before.redis:
            fault.detail.append("not injected: no embedded redis-server found")
            return
        fault.target = f"redis-server pid {before.redis} ({before.source})"
        if _signal(before.redis, signal.SIGKILL):
            fault.injected = True
            self._recovery(fault, time.monotonic(), gone=before.redis, redis=True)

    def load_raises(self, fault: Fault, before: Pids, stop: threading.Event) -> None:
        """Deploy a copy of a valid model, then overwrite the file with garbage and call it."""
        self._model_fault(fault, "raise", garbage_after_deploy=True)

    def corrupt_model(self, fault: Fault, before: Pids, stop: threading.Event) -> None:
        """Deploy a file of random bytes and call it."""
        self._model_fault(fault, "corrupt", garbage_after_deploy=False)

    def _model_fault(self, fault: Fault, tag: str, garbage_after_deploy: bool) -> None:
        from models.catalog import load_catalog, write_catalog

        source = self.probe  # a small model the agent serves under its own name
        catalog = load_catalog(self.models_dir)
        name = f"soak-{tag}-{self._n}"
        path = self.models_dir / f"{name}.tflite"
        record = {**catalog[source], "name": name, "file": path.name}
        if garbage_after_deploy:
            shutil.copy(self.models_dir / catalog[source]["file"], path)
        else:
            path.write_bytes(os.urandom(64 * 1024))
        write_catalog(self.models_dir, {**catalog, name: record})
        fault.target = f"function {name} (model file {path.name})"
        try:
            resp = self.session.post(
                self.url + "/system/functions", json={"name": name, "model": name}, timeout=10
            )
            if resp.status_code not in (200, 201):  # refused at deploy: fine if it says why
                fault.detail.append(f"deploy: {resp.status_code} {resp.text[:200].strip()}")
                fault.recovered = resp.status_code == 400 and classify(resp)[1] is not None
                fault.recover_s = 0.0 if fault.recovered else None
                return
            if garbage_after_deploy:
                path.write_bytes(os.urandom(path.stat().st_size // 2 or 64))
            fault.injected = True
            body, ctype = self.payloads[source]
            try:
                call = self.session.post(
                    f"{self.url}/function/{name}",
                    data=body,
                    headers={"Content-Type": ctype},
                    timeout=30,
                )
                outcome, message = classify(call)
            except requests.RequestException as exc:
                outcome, message = unanswered(exc), str(exc)
            fault.detail.append(f"call: {outcome}: {message}")
            self._recovery(
                fault,
                time.monotonic(),
                failed_function=name,
                answered=not outcome.startswith(("unanswered", "no cause", "200")),
            )
        finally:
            self.session.delete(
                self.url + "/system/functions", json={"functionName": name}, timeout=10
            )
            left = load_catalog(self.models_dir)
            left.pop(name, None)
            write_catalog(self.models_dir, left)
            path.unlink(missing_ok=True)

    # -- recovery -------------------------------------------------------------------------

    def _recovery(
        self,
        fault: Fault,
        since: float,
        gone: int | None = None,
        redis: bool = False,
        failed_function: str | None = None,
        answered: bool = True,
    ) -> None:
        """Wait until the agent is whole again (or ``recover_timeout``); record what is not."""
        if not answered:
            fault.detail.append("its call was not answered with a cause")
        deadline = since + self.recover_timeout
        missing: list[str] = []
        while True:
            missing = self._missing(gone, redis, failed_function)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        fault.recovered = answered and not missing
        if fault.recovered:
            fault.recover_s = round(time.monotonic() - since, 2)
        else:
            fault.detail.append(f"after {self.recover_timeout:g} s: " + "; ".join(missing))

    def _missing(self, gone: int | None, redis: bool, failed_function: str | None) -> list[str]:
        """What still keeps the agent from being whole (empty: recovered)."""
        if not self.agent_running():
            return ["the `brulee up` process has exited"]
        out = []
        try:
            health = self.session.get(self.url + "/healthz", timeout=2)
            n = health.json().get("workers", 0) if health.status_code == 200 else 0
            if health.status_code != 200:
                out.append(f"/healthz answers {health.status_code}")
            elif n < self.workers:
                out.append(f"/healthz counts {n} of {self.workers} workers")
        except (requests.RequestException, ValueError) as exc:
            out.append(f"/healthz unreachable ({exc.__class__.__name__})")
        pids = self.pids()
        live = [p for p in pids.workers.values() if alive(p)]
        if len(live) < self.workers:
            out.append(f"{len(live)} of {self.workers} worker processes ({pids.source})")
        if gone and alive(gone):
            out.append(f"pid {gone} still alive")
        if redis and not alive(pids.redis):
            out.append("no redis-server running")
        if failed_function:
            out += self._listed_failed(failed_function)
        out += self._probe()
        return out

    def _listed_failed(self, name: str) -> list[str]:
        try:
            resp = self.session.get(self.url + "/system/functions", timeout=5)
            listed = {f["name"]: f for f in resp.json()["functions"]}
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return ["/system/functions unreadable"]
        fn = listed.get(name) or {}
        if fn.get("state") != "failed" or not fn.get("reason"):
            return [f"{name} is not listed as failed with a reason ({fn.get('state')})"]
        return []

    def _probe(self) -> list[str]:
        body, ctype = self.payloads[self.probe]
        try:
            resp = self.session.post(
                f"{self.url}/function/{self.probe}",
                data=body,
                headers={"Content-Type": ctype},
                timeout=10,
            )
        except requests.RequestException as exc:
            return [f"probe {self.probe}: {exc.__class__.__name__}"]
        return [] if resp.status_code == 200 else [f"probe {self.probe}: {classify(resp)[0]}"]

    def doc(self) -> list[dict]:
        return [asdict(f) for f in self.faults]


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
