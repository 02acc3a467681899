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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

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


TIMEOUT_S = 10  # a receiver slower than this is logged as failed
log = logging.getLogger("brulee.callbacks")


def notify(req: dict[str, Any], result: dict[str, Any]) -> None:
    """POST an async job's final answer to its callback URL (validated by the gateway); a
    receiver that fails or cannot be reached is logged, never retried here."""
    status = "failed" if "error" in result else "finished"
    body = {"job_id": req.get("job_id"), "status": status, "function": req["function"]}
    body.update({"error": result["error"]} if status == "failed" else {"result": result["result"]})
    request = Request(req["callback"], data=json.dumps(body).encode(), method="POST",
                      headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urlopen(request, timeout=TIMEOUT_S):
            pass
    except Exception as exc:  # noqa: BLE001 (a receiver's failure is not the job's)
        log.warning("callback %s for job %s failed: %s", req["callback"], req.get("job_id"), exc)
