"""The soak test's load (``benchmarks/soak.py``): an Azure-like open-loop workload sent from a
thread pool, every answer accounted by outcome and cause, plus asynchronous jobs followed to
their end.

- The workload is ``brulee trace synth``'s (``loadgen.synth``) paired onto the models by load
  cost (``loadgen.pairing``, quantiles, as ``brulee testbed`` pairs), with as many synthetic
  hours as give the wanted mean rate, compressed into the run.
- Each request is sent at its time (open loop: a slow agent does not slow the arrivals) by a
  pool thread with its own keep-alive ``requests.Session``; a share of them go to
  ``/async-function/NAME`` and their jobs are polled on ``/jobs/ID`` until finished or failed.
- Every answer lands in exactly one outcome: ``200 hit``/``200 miss``, an error status with
  the cause its message names (``503 worker died``, ``503 Redis down``, …), an error that names
  no cause, or ``unanswered`` (a client timeout or a broken connection).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from loadgen.workload_file import Request, write_workload


class AgentSession(requests.Session):
    """A keep-alive session to the agent that sends its token with every request and drops its
    connections once idle for ``IDLE_S``, before gunicorn closes them (keep-alive 2 s): reusing
    a connection the server is closing at that instant fails with a reset that no agent fault
    caused, and would be counted as unanswered."""

    IDLE_S = 1.0

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.trust_env = False  # talk to the agent directly, whatever proxy the env names
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._last = 0.0

    def request(self, *args, **kwargs) -> requests.Response:
        if time.monotonic() - self._last > self.IDLE_S:
            self.close()  # the adapters open new connections on the next request
        try:
            return super().request(*args, **kwargs)
        finally:
            self._last = time.monotonic()


def agent_session(token: str | None) -> AgentSession:
    return AgentSession(token)


EXAMPLES = 3  # messages kept per outcome

# (status or None for any, words that must all be in the message, outcome), first match wins
CAUSES: list[tuple[int | None, tuple[str, ...], str]] = [
    (503, ("wait", "memory"), "503 waited for memory"),
    (503, ("no room",), "503 memory busy"),
    (503, ("more than reserved",), "503 memory busy"),
    (503, ("died",), "503 worker died"),
    (503, ("redis",), "503 Redis down"),
    (503, ("cannot be loaded",), "503 model failed to load"),
    (503, ("failed:",), "503 model failed to load"),
    (503, ("no worker",), "503 no worker"),
    (507, (), "507 larger than cap"),
    (429, (), "429 queue full"),
    (504, (), "504 sync timeout"),
]
# outcomes that break the soak's promise "every request is answered, with a cause"
BAD_PREFIXES = ("unanswered", "no cause")


def make_workload(
    profiles: str | Path,
    models: Sequence[str],
    minutes: float,
    rate: float,
    functions: int,
    seed: int,
    out: Path,
) -> Path:
    """A synthetic Azure-like workload of about ``rate`` requests/s over ``minutes``, its
    functions paired onto ``models`` by load cost (the most invoked get the costliest)."""
    from loadgen.pairing import pair
    from loadgen.profiles import load_profiles
    from loadgen.synth import synth_functions, synth_requests

    per_hour = sum(f.count for f in synth_functions(functions, 1.0, seed)) or 1
    hours = min(24.0, max(0.01, rate * minutes * 60 / per_hour))
    plan = synth_functions(functions, hours, seed)
    costs = load_profiles(profiles)
    # pair only the functions with requests (so that every model gets some); a timer planned
    # at 0 may still fire once: it gets the cheapest model
    cheapest = min(models, key=lambda m: (costs[m].load_s, m))
    mapping = {f.name: cheapest for f in plan}
    active = {f.name: f.count for f in plan if f.count}
    mapping |= pair(active, sorted(models), "quantiles", profiles=costs, cost="load", seed=seed)
    scale = minutes * 60 / (hours * 3600)
    write_workload(
        out,
        (r._replace(time=r.time * scale) for r in synth_requests(functions, hours, seed, mapping)),
    )
    return out


def _message(resp: requests.Response) -> str | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, str) and error.strip() else None


def classify(resp: requests.Response) -> tuple[str, str | None]:
    """(outcome, the error message) of one answer."""
    if resp.status_code == 200:
        return f"200 {resp.headers.get('X-Cache', 'no X-Cache')}", None
    if resp.status_code == 202:
        return "202 async accepted", None
    message = _message(resp)
    if message is None:
        return f"no cause: {resp.status_code} without an error message", resp.text[:200]
    low = message.lower()
    for status, words, outcome in CAUSES:
        if (status is None or status == resp.status_code) and all(w in low for w in words):
            return outcome, message
    kind = "client error" if 400 <= resp.status_code < 500 else "other cause"
    return f"{resp.status_code} {kind}", message


def unanswered(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "unanswered: client timeout"
    return "unanswered: connection refused/reset"


class Tally:
    """Outcomes counted under a lock, with the first few messages of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def add(self, outcome: str, message: str | None = None) -> None:
        with self._lock:
            self.counts[outcome] += 1
            if message and len(self.examples[outcome]) < EXAMPLES:
                self.examples[outcome].append(message[:300])

    def bad(self) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(BAD_PREFIXES))

    def doc(self) -> dict:
        with self._lock:
            return {
                "counts": dict(sorted(self.counts.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())},
            }


class Jobs:
    """Accepted async jobs, polled on ``/jobs/ID`` until ``finished`` or ``failed``."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.pending: dict[str, float] = {}  # job id -> accepted at
        self.ends = Tally()  # finished / failed: cause / failed without a reason / lost
        self.accepted = 0
        self._lock = threading.Lock()
        self._session = agent_session(token)

    def accept(self, job_id: str) -> None:
        with self._lock:
            self.pending[job_id] = time.monotonic()
            self.accepted += 1

    def poll_once(self) -> None:
        with self._lock:
            ids = list(self.pending)
        for job_id in ids:
            try:
                resp = self._session.get(f"{self.url}/jobs/{job_id}", timeout=self.timeout)
                doc = resp.json() if resp.status_code == 200 else {}
            except (requests.RequestException, ValueError):
                continue  # the agent is away for a moment: ask again later
            status = doc.get("status")
            if status == "finished":
                self._end(job_id, "finished")
            elif status == "failed":
                error = doc.get("error")
                if isinstance(error, str) and error.strip():
                    self._end(job_id, f"failed: {_cause(error)}", error)
                else:
                    self._end(job_id, "lost: failed without a reason")

    def _end(self, job_id: str, outcome: str, message: str | None = None) -> None:
        with self._lock:
            if self.pending.pop(job_id, None) is not None:
                self.ends.add(outcome, message)

    def drain(self, grace: float, interval: float = 0.5) -> None:
        """Poll until every job ended or ``grace`` seconds passed; the rest are lost."""
        deadline = time.monotonic() + grace
        while self.pending and time.monotonic() < deadline:
            self.poll_once()
            time.sleep(interval)
        for job_id in list(self.pending):
            self._end(job_id, "lost: no end within the grace period", job_id)

    def lost(self) -> int:
        return sum(n for k, n in self.ends.counts.items() if k.startswith("lost"))


def _cause(message: str) -> str:
    low = message.lower()
    for _status, words, outcome in CAUSES:
        if words and all(w in low for w in words):
            return outcome.split(" ", 1)[1]
    return "other"


class Load:
    """Sends a workload open-loop; ``tally`` holds the outcome of every request sent."""

    def __init__(
        self,
        url: str,
        token: str | None,
        payloads: dict[str, tuple[bytes, str]],
        threads: int,
        timeout: float,
        async_share: float,
        seed: int,
    ) -> None:
        self.url, self.token, self.payloads, self.timeout = url, token, payloads, timeout
        self.async_share = async_share
        self.rng = np.random.default_rng(seed)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="soak-load")
        self.local = threading.local()
        self.tally = Tally()
        self.jobs = Jobs(url, token, timeout)
        self.t0 = time.monotonic()
        self.sent = 0
        self.skipped: Counter[str] = Counter()  # scheduled but not sent, by reason
        self.max_lag = 0.0  # how late the last request was handed to a thread
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = agent_session(self.token)
        return self.local.session

    def send(self, function: str, sync: bool) -> None:
        body, ctype = self.payloads[function]
        path = "function" if sync else "async-function"
        at = f"t={time.monotonic() - self.t0:.1f}s {function}"
        try:
            resp = self._session().post(
                f"{self.url}/{path}/{function}",
                data=body,
                headers={"Content-Type": ctype},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            self.tally.add(unanswered(exc), f"{at}: {exc.__class__.__name__}: {exc}")
            return
        outcome, message = classify(resp)
        if resp.status_code == 202:
            try:
                self.jobs.accept(resp.json()["id"])
            except (ValueError, KeyError, TypeError):
                outcome, message = "no cause: 202 without a job id", resp.text[:200]
        self.tally.add(outcome, message and f"{at}: {message}")

    def run(self, requests_: Iterable[Request], t0: float, stop: threading.Event) -> None:
        """Hand each request to a thread at ``t0 + its time``; returns when all were handed."""
        self.t0 = t0
        for req in requests_:
            if req.function not in self.payloads:
                self.skipped[f"function {req.function} not served"] += 1
                continue
            delay = t0 + req.time - time.monotonic()
            if delay > 0 and stop.wait(delay):
                self.skipped["run stopped"] += 1
                continue
            if stop.is_set():
                self.skipped["run stopped"] += 1
                continue
            self.max_lag = max(self.max_lag, -delay)
            sync = self.rng.random() >= self.async_share
            with self._lock:
                self.sent += 1
            self.pool.submit(self.send, req.function, sync)

    def poll_jobs(self, stop: threading.Event, interval: float = 0.5) -> None:
        while not stop.wait(interval):
            self.jobs.poll_once()

    def finish(self) -> None:
        """Wait for every request in flight to end (answered or timed out)."""
        self.pool.shutdown(wait=True)
