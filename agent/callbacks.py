"""Where an async invocation's ``X-Callback-Url`` may point.

A callback is an HTTP POST the agent itself sends (RQ's webhook, from the worker) when a job
ends, so an unchecked URL lets any client make the device POST to its own loopback services,
the local network or a cloud metadata endpoint. The gateway checks the URL before anything is
enqueued (:meth:`CallbackPolicy.check`):

- the scheme is ``http`` or ``https`` and there is a host;
- every address the host resolves to (an IP literal is its own address; IPv4-mapped IPv6 is
  judged as the IPv4 address it carries) is global: loopback, link-local, private, shared,
  multicast, reserved and unspecified ranges are refused;
- unless the host is allowed by ``BRULEE_CALLBACK_ALLOW`` (``brulee up --callback-allow``):
  comma-separated host names (matched against the URL's host as written, case-insensitive,
  no resolution) and IP networks in CIDR form (``10.0.0.0/8``, ``::1/128``, or a single
  address), which admit any address they contain.

Known limits: the address is checked, not pinned. The webhook resolves the host again when it
fires (in the worker, up to the job's run time later), so a host whose DNS answer changes in
between (DNS rebinding) can still reach a refused address; and the webhook follows HTTP
redirects (as a GET), so an allowed server can redirect it. Allow only hosts you control.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from agent.keys import key

ENV = "BRULEE_CALLBACK_ALLOW"
MAX_URL = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (attribute of an address, what it is called in the refusal), in the order they are reported
REFUSED_KINDS = (
    ("is_unspecified", "an unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)


class CallbackRefused(ValueError):
    """An ``X-Callback-Url`` the agent will not call; the message names the host and why."""


def _address(text: str) -> IPAddress | None:
    """An IP literal (a URL's bracketed IPv6 host without brackets), else None."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None


def refusal(addr: IPAddress) -> str | None:
    """Why a callback may not reach ``addr`` (None: it is a global address)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return refusal(addr.ipv4_mapped)
    for attribute, kind in REFUSED_KINDS:
        if getattr(addr, attribute):
            return kind
    if not addr.is_global:  # e.g. shared address space 100.64.0.0/10
        return "not a global address"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``, as the webhook's client)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = {_address(str(info[4][0])) for info in infos}
    return sorted((a for a in found if a is not None), key=str)


@dataclass(frozen=True)
class CallbackPolicy:
    """The allow-list of ``BRULEE_CALLBACK_ALLOW``: host names and IP networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | Iterable[str] | None) -> CallbackPolicy:
        """From ``"host,10.0.0.0/8,::1"``; ValueError naming an entry that is neither a host
        name nor an IP network."""
        entries = text.split(",") if isinstance(text, str) else list(text or ())
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not all(c.isalnum() or c in "-._" for c in entry):
                raise ValueError(
                    f"{ENV}: {entry!r} is neither a host name nor an IP network (CIDR)"
                )
            hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_env(cls) -> CallbackPolicy:
        return cls.parse(os.environ.get(ENV))

    def allows(self, addr: IPAddress) -> bool:
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        return any(a in net for net in self.networks for a in (addr, mapped) if a is not None)

    def check(self, url: str) -> str:
        """``url`` if the agent may POST to it; CallbackRefused naming the host and the reason."""
        if len(url) > MAX_URL:
            raise CallbackRefused(f"X-Callback-Url is longer than {MAX_URL} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise CallbackRefused(
                f"X-Callback-Url {url!r:.100} is not a valid URL ({exc})"
            ) from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise CallbackRefused(
                f"X-Callback-Url scheme {scheme or '(none)'!r} is refused: http or https only"
            )
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise CallbackRefused(f"X-Callback-Url {url!r:.100} names no host")
        if host in self.hosts:
            return url
        literal = _address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = resolve(host, port or (443 if scheme == "https" else 80))
            except (OSError, UnicodeError) as exc:
                raise CallbackRefused(
                    f"X-Callback-Url host {host!r} cannot be resolved ({exc})"
                ) from exc
            if not addresses:
                raise CallbackRefused(f"X-Callback-Url host {host!r} resolves to no address")
        for addr in addresses:
            why = None if self.allows(addr) else refusal(addr)
            if why is not None:
                via = "" if literal is not None else f" (it resolves to {addr})"
                raise CallbackRefused(
                    f"X-Callback-Url host {host!r}{via} is {why}; callbacks go to public "
                    f"hosts only unless {ENV} (brulee up --callback-allow) allows it"
                )
        return url


TIMEOUT_S = 10  # a receiver slower than this counts as failed
ATTEMPTS_ENV = "BRULEE_CALLBACK_ATTEMPTS"
DEFAULT_ATTEMPTS = 5  # deliveries of one callback, at most
BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0  # 1, 2, 4, 8 … s between attempts
LEASE_S = TIMEOUT_S + 20  # a delivery whose sender died is tried again after this
log = logging.getLogger("brulee.callbacks")


def max_attempts() -> int:
    return max(int(os.environ.get(ATTEMPTS_ENV) or DEFAULT_ATTEMPTS), 1)


def schedule(pipe, req: dict[str, Any], result: dict[str, Any]) -> None:
    """Queue the POST of an async job's final answer to its callback URL (validated by the
    gateway), in ``pipe``: delivered by any worker's delivery thread (:func:`deliver_due`),
    retried with backoff while the receiver fails or cannot be reached."""
    if not req.get("callback"):
        return
    status = "failed" if "error" in result else "finished"
    body = {"job_id": req.get("job_id"), "status": status, "function": req["function"]}
    body.update({"error": result["error"]} if status == "failed" else {"result": result["result"]})
    rec = key("job", req["job_id"])
    pipe.hset(rec, mapping={"callback": req["callback"], "callback_body": json.dumps(body)})
    pipe.zadd(key("callbacks"), {req["job_id"]: time.time()})


def deliver_due(conn, scripts, limit: int = 10) -> int:
    """Deliver the callbacks that are due (each leased to this process while it tries, so
    senders never overlap); returns how many were tried."""
    due = scripts.lease(keys=[key("callbacks")], args=[time.time(), LEASE_S, limit])
    for raw in due:
        job_id = raw.decode()
        rec = key("job", job_id)
        url, body, tried = conn.hmget(rec, "callback", "callback_body", "callback_attempts")
        if url is None or body is None:
            conn.zrem(key("callbacks"), job_id)  # its record expired
            continue
        n = int(tried or 0) + 1
        outcome = post(url.decode(), body)
        done = outcome["ok"] or n >= max_attempts()
        with conn.pipeline() as pipe:
            pipe.hset(rec, mapping={"callback_attempts": n, f"callback:{n}": json.dumps(outcome)})
            if outcome["ok"]:
                pipe.hset(rec, "callback_delivered", 1)
            if done:
                pipe.zrem(key("callbacks"), job_id)
            else:
                pipe.zadd(key("callbacks"), {job_id: time.time() + backoff(n)})
            pipe.execute()
        if not outcome["ok"]:
            log.warning("callback for job %s, attempt %d: %s", job_id, n, outcome["error"])
    return len(due)


def backoff(attempt: int) -> float:
    return min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


def post(url: str, body: bytes) -> dict[str, Any]:
    """One delivery: ``{"at", "ok", "status"}`` or ``{"at", "ok": False, "error"}``."""
    at = round(time.time(), 3)
    request = Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=TIMEOUT_S) as resp:
            return {"at": at, "ok": True, "status": resp.status}
    except HTTPError as exc:
        return {"at": at, "ok": False, "status": exc.code, "error": f"HTTP {exc.code}"}
    except Exception as exc:  # noqa: BLE001 (unreachable, refused, timed out: tried again)
        return {"at": at, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def deliveries(record: dict[str, str]) -> dict[str, Any]:
    """A job's callback as ``GET /jobs/{id}`` shows it: URL, delivered, each attempt."""
    n = int(record.get("callback_attempts", 0))
    attempts = [json.loads(record[f"callback:{i}"]) for i in range(1, n + 1)
                if f"callback:{i}" in record]  # fmt: skip
    return {
        "url": record["callback"],
        "delivered": record.get("callback_delivered") == "1",
        "pending": "callback_body" in record
        and record.get("callback_delivered") != "1"
        and n < max_attempts(),
        "attempts": attempts,
    }
