"""The soak test's invariants (``benchmarks/soak.py``), checked once a second on
``GET /system/cache`` of a running agent.

Per device:

- ``accounted > cap``: ``used_bytes`` exceeds ``cap_bytes``;
- ``accounted != live copies``: ``used_bytes`` differs from the sum of the bytes of the copies
  the workers hold (``workers[w].models[].bytes``);
- ``resident > cap + baseline``: the workers' resident memory ``rss_bytes`` exceeds
  ``cap_bytes + baseline_rss_bytes`` by more than the tolerance (:func:`rss_tolerance`);
- ``loading too long``: a copy stays ``loading`` longer than 10x its profiled load time + 5 s
  (from the copy's ``since`` timestamp when ``/system/cache`` gives one, else from when this
  checker first saw it loading).

A second in which ``/system/cache`` cannot be read (Redis down, the gateway restarting) is an
``agent unreachable`` second, not a violation.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import requests

from loadgen.soak_load import EXAMPLES, agent_session

LOAD_FACTOR, LOAD_SLACK_S = 10.0, 5.0
UNPROFILED_LOAD_S = 1.0  # a model without a profile (the faults' models)
MIB = 1 << 20


def rss_tolerance(cap: int, workers: int) -> int:
    """Slack on resident memory: 2 % of the cap, at least 2 MiB per worker (a request's
    tensors and the allocator's rounding ride along with the models)."""
    return max(int(0.02 * cap), 2 * MIB * workers)


def _since(value: object) -> float | None:
    """A copy's ``since`` as epoch seconds (seconds or milliseconds accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / 1000 if value > 1e12 else float(value)


class Checker(threading.Thread):
    def __init__(
        self,
        url: str,
        token: str,
        load_s: dict[str, float],
        workers: int,
        t0: float,
        interval: float = 1.0,
    ) -> None:
        super().__init__(daemon=True, name="soak-checks")
        self.url, self.load_s, self.workers, self.t0 = url, load_s, workers, t0
        self.interval = interval
        self.session = agent_session(token)
        self.violations: Counter[str] = Counter()  # kind -> seconds (or copies) in violation
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.checks = 0
        self.unreachable: Counter[str] = Counter()  # reason -> seconds
        self.peak = {"used_over_cap": 0.0, "rss_over_cap_plus_baseline_bytes": None}
        self._loading: dict[tuple[str, str, str], float] = {}  # (device, worker, model) -> since
        self._reported: set[tuple[str, str, str, float]] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        next_t = time.monotonic()
        while not self._halt.is_set():
            self.check_once()
            next_t += self.interval
            self._halt.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def _violate(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(f"t={time.monotonic() - self.t0:.1f}s {detail}")

    def check_once(self) -> None:
        self.checks += 1
        try:
            resp = self.session.get(self.url + "/system/cache", timeout=self.interval * 2)
            cache = resp.json() if resp.status_code == 200 else None
            if cache is None:
                self.unreachable[f"/system/cache answered {resp.status_code}"] += 1
                return
        except (requests.RequestException, ValueError) as exc:
            self.unreachable[f"/system/cache: {exc.__class__.__name__}"] += 1
            return
        seen = set()
        for device, d in (cache.get("devices") or {}).items():
            seen |= self._check_device(device, d)
        # copies no longer loading start afresh if they load again
        self._loading = {k: v for k, v in self._loading.items() if k in seen}

    def _check_device(self, device: str, d: dict) -> set[tuple[str, str, str]]:
        cap, used = int(d.get("cap_bytes") or 0), int(d.get("used_bytes") or 0)
        workers = d.get("workers") or {}
        copies = [(w, m) for w, info in workers.items() for m in info.get("models") or []]
        live = sum(int(m.get("bytes") or 0) for _, m in copies)
        if cap and used > cap:
            self._violate("accounted > cap", f"{device}: used {used} > cap {cap}")
        if used != live:
            self._violate(
                "accounted != live copies",
                f"{device}: used {used} != {live} held by {len(copies)} copies",
            )
        if cap:
            self.peak["used_over_cap"] = max(self.peak["used_over_cap"], round(used / cap, 4))
        rss, base = d.get("rss_bytes"), d.get("baseline_rss_bytes")
        if cap and isinstance(rss, int) and isinstance(base, int):
            over = rss - (cap + base)
            peak = self.peak["rss_over_cap_plus_baseline_bytes"]
            self.peak["rss_over_cap_plus_baseline_bytes"] = (
                over if peak is None else max(peak, over)
            )
            tol = rss_tolerance(cap, max(self.workers, len(workers)))
            if over > tol:
                self._violate(
                    "resident > cap + baseline",
                    f"{device}: rss {rss} > cap {cap} + baseline {base} + tolerance "
                    f"{tol} by {over - tol}",
                )
        now = time.time()
        seen = set()
        for worker, m in copies:
            if m.get("state") != "loading":
                continue
            k = (device, worker, m.get("model", "?"))
            seen.add(k)
            since = _since(m.get("since")) or self._loading.setdefault(k, now)
            limit = LOAD_FACTOR * self.load_s.get(k[2], UNPROFILED_LOAD_S) + LOAD_SLACK_S
            if now - since > limit and (*k, since) not in self._reported:
                self._reported.add((*k, since))  # one violation per stuck copy
                self._violate(
                    "loading too long",
                    f"{k[2]} on {worker} loading for {now - since:.1f} s > {limit:.1f} s",
                )
        return seen

    def doc(self) -> dict:
        return {
            "checks": self.checks,
            "violations": dict(self.violations),
            "examples": dict(self.examples),
            "unreachable_s": dict(self.unreachable),
            "peak": self.peak,
        }
