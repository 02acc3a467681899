"""The status page: ``GET /status`` (a self-contained HTML page, no data in it) and
``GET /system/status`` (the JSON it polls, behind the management token).

The page holds no secret and no data, so it is served without the token: it asks for the
token (or takes it from the URL's fragment, ``/status#token=…``, which browsers never send to
the server), keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer``
on each poll of ``/system/status``. Everything it draws (tables, the memory chart as inline
SVG) comes from that JSON; it loads nothing else, so it works on a device with no Internet.
A Content-Security-Policy pins its one script and style by hash and allows fetches to this
origin only.

The JSON adds to ``/system/cache``'s view what the page needs: each copy's utility under the
policy and its last use, the recent eviction decisions with the utilities compared
(:mod:`agent.evictions`), the workers' memory history (:mod:`agent.memhistory`), and per
function its hits, misses and mean latencies.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

from agent import evictions, memhistory
from agent.keys import decode, key, slot, unslot
from agent.placement import Placement, parse_entries, policy_entries
from agent.registry import Registry
from agent.snapshot import snapshot

PAGE = Path(__file__).with_name("static") / "status.html"
EVICTIONS_SHOWN = 10
LATENCIES = ("total", "queue", "load", "exec")
WORKER_FIELDS = ("pid", "host", "rss_bytes", "baseline_rss_bytes", "queued")


def _copies(placement: Placement, device: str, view: dict[str, Any], now: float) -> list[dict]:
    """Every copy on ``device`` with its state, worker, bytes, the model's hits there, last
    use and utility under the policy (computed as a decision would, over all the copies);
    then the copies evicted that their worker has not dropped yet (``releasing``: no longer
    counted against the cap, so no bytes, last use or utility)."""
    r = placement.r
    alive, _ = placement.members.workers()  # (a read: forgetting the dead is placement's)
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(key("entries", device))
        pipe.hgetall(key("pins", device))
        pipe.hgetall(key("queued", device))
        pipe.get(key("clock", device))
        pipe.get(key("requests"))
        pipe.hkeys(key("releasing", device))
        raw, pins, queued, clock, requests, releasing = pipe.execute()
    entries = parse_entries(raw, alive)
    pins, queued = decode(pins), decode(queued)
    facts = policy_entries(r, device, entries, pins)
    policy = placement.policy(float(clock or 0.0))
    utility = evictions.utilities(policy, [e for e, _ in facts], int(requests or 0), now)
    by_slot = {s: (e, u) for (e, s), u in zip(facts, utility)}
    out = []
    for model, worker, doc in sorted(entries):
        s = slot(model, worker)
        entry, u = by_slot[s]
        out.append(
            {
                "model": model,
                "worker": worker,
                "state": doc["state"],
                "bytes": int(doc["bytes"]),
                "since": float(doc.get("since", doc["inserted_at"])),
                "last_used": entry.last_used,
                "requests": entry.requests,
                "hits": view["hits"].get(model, 0),
                "misses": view["misses"].get(model, 0),
                "in_flight": int(pins.get(s, 0)),
                "queued": int(queued.get(s, 0)),
                "utility": u,
            }
        )
    for model, worker in sorted(map(unslot, releasing)):  # evicted, not yet dropped
        out.append({"model": model, "worker": worker, "state": "releasing", "bytes": None,
                    "last_used": None, "hits": view["hits"].get(model, 0),
                    "misses": view["misses"].get(model, 0), "utility": None})  # fmt: skip
    return out


def _functions(placement: Placement, registry: Registry, loaded: set[str]) -> list[dict]:
    """Per function: its model and state, hits, misses, hit ratio and mean latencies."""
    r = placement.r
    registry.ensure_loaded()
    with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(key("invocations"))
        pipe.hgetall(key("latency"))
        pipe.hgetall(key("failed"))
        counts, spent, failed = (decode(x) for x in pipe.execute())
    out = []
    for name, doc in sorted(registry.all().items()):
        hits, misses = int(counts.get(f"{name}|hit", 0)), int(counts.get(f"{name}|miss", 0))
        calls = hits + misses
        seconds = {k: float(spent.get(f"{name}|{k}", 0.0)) for k in LATENCIES}
        state = "failed" if name in failed else ("ready" if doc["model"] in loaded else "cold")
        out.append(
            {
                "name": name,
                "model": doc["model"],
                "state": state,
                "hits": hits,
                "misses": misses,
                "hit_ratio": hits / calls if calls else None,
                "seconds": seconds,
                "mean_s": {k: (v / calls if calls else None) for k, v in seconds.items()},
            }
        )
    return out


def status(placement: Placement, registry: Registry) -> dict[str, Any]:
    """What ``GET /system/status`` answers (see the module's docstring)."""
    now = time.time()
    view = snapshot(placement)
    devices: dict[str, Any] = {}
    loaded: set[str] = set()
    for device, d in view["devices"].items():
        copies = _copies(placement, device, d, now)
        loaded |= {c["model"] for c in copies}
        devices[device] = {
            "cap_bytes": d["cap_bytes"],
            "used_bytes": d["used_bytes"],
            "releasing": d["releasing"],
            "rss_bytes": d["rss_bytes"],
            "baseline_rss_bytes": d["baseline_rss_bytes"],
            "workers": {name: {k: w[k] for k in WORKER_FIELDS} for name, w in d["workers"].items()},
            "copies": copies,
            "admission": d["admission"],
            "evicted": d["evictions"],
            "evictions": evictions.recent(placement.r, device, EVICTIONS_SHOWN),
        }
    return {
        "time": now,
        "policy": placement.policy_name,
        "sample_s": memhistory.SAMPLE_S,
        "devices": devices,
        "memory": memhistory.read(placement.r),
        "functions": _functions(placement, registry, loaded),
    }


def _csp_hashes(html: str) -> tuple[str, str]:
    """The CSP sources of the page's inline script and style (their SHA-256)."""

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        if body is None:
            raise ValueError(f"{PAGE} has no <{tag}>")
        raw = hashlib.sha256(body.group(1).encode()).digest()
        return f"'sha256-{base64.b64encode(raw).decode()}'"

    return digest("script"), digest("style")


def register(
    app: Flask, placement: Placement, registry: Registry, require_token: Callable[[], None]
) -> None:
    """Add the page's two routes to the gateway, and the memory sampler's start."""
    html = PAGE.read_text()
    script, style = _csp_hashes(html)
    headers = {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {script}; style-src {style}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    sampler = memhistory.Sampler(placement)
    app.before_request(sampler.ensure_running)

    @app.get("/status")
    def status_page():
        return Response(html, mimetype="text/html", headers=headers)

    @app.get("/system/status")
    def system_status():
        require_token()  # worker names hold host names and process ids
        resp = jsonify(status(placement, registry))
        resp.headers["Cache-Control"] = "no-store"
        return resp
