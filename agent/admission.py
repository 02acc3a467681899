"""Admission: a miss that cannot get memory now waits for it, in order, until its deadline.

The rule, shared by the live agent (``agent.placement``, which keeps the queue in Redis) and
the simulator (``loadgen.simulator``, which keeps it in a list):

- **Who waits.** A request whose model is not cached (nor loading) and whose memory is held
  by copies that are executing or loading (pinned) cannot be placed now. It waits in its
  device's admission queue. Hits never wait here: they need no memory.
- **Order: first come, first served, no overtaking.** The queue is served strictly in arrival
  order: only its head may take memory; the next request is tried as soon as the head is
  placed (or leaves). A new miss is placed at once only when nobody is waiting on its device;
  otherwise it joins the tail, even if it would fit now. This is what keeps a large model from
  starving behind a stream of small ones: memory that frees is never handed to a later,
  smaller request while an earlier, larger one waits. The cost is head-of-line blocking, which
  lasts at most as long as the executions holding the memory (they are never preempted).
- **Deadline.** A synchronous request waits at most until its deadline: the agent's sync
  timeout, shortened by the ``X-Deadline-Ms`` request header. Then it leaves the queue and is
  answered 503 with a ``Retry-After`` estimate and how long it waited for memory. An
  asynchronous job waits in the same queue without a deadline.
- **Bound: loads, not requests.** At most ``max_waiting`` *models* wait for memory per device
  (``--max-waiting``, default :data:`DEFAULT_MAX_WAITING`): each is one load the device owes.
  A request whose model already has a request waiting joins it ("rides"): it needs no memory
  of its own (once the first is placed the model is loading, and the rest are hits), so it
  adds nothing to anybody's wait for memory. Riders are bounded by their deadline, and all
  waiting requests together by ``REQUESTS_PER_LOAD * max_waiting`` (what a Pi keeps parked in
  Redis and in the gateway's threads without effort). Past either bound a request is refused
  at once: 429 with ``Retry-After``. (Counting requests instead refused a burst of 64
  requests for one absent model although it would cost a single load.)

Everything here is pure (no Redis, no clock): the agent and the simulator call the same
functions with their own time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_WAITING = 64  # models waiting for memory per device
REQUESTS_PER_LOAD = 4  # waiting requests in all: at most this many per model the bound allows
MIN_RETRY_AFTER_S = 1  # Retry-After is whole seconds (RFC 9110), never 0


@dataclass(frozen=True)
class Ticket:
    """One waiting request: ``arrived`` orders the queue, ``deadline`` (``math.inf`` for async
    jobs) is when it gives up."""

    id: str
    model: str
    bytes: int
    arrived: float
    deadline: float = math.inf


def must_wait(waiting: int) -> bool:
    """Whether a new miss joins the queue rather than trying for memory at once: it does when
    anybody is waiting on its device (no overtaking)."""
    return waiting > 0


def max_requests(max_waiting: int) -> int:
    """The ceiling on requests waiting per device, riders included."""
    return REQUESTS_PER_LOAD * max_waiting


def is_full(waiting: Mapping[str, int], model: str, max_waiting: int) -> bool:
    """Whether a request for ``model`` joining the queue would exceed the bound (then: 429).
    ``waiting``: how many requests wait for each model on the device now."""
    if sum(waiting.values()) >= max_requests(max_waiting):
        return True
    return not waiting.get(model) and sum(1 for n in waiting.values() if n > 0) >= max_waiting


def deadline(now: float, timeout_s: float, header_ms: str | None = None) -> float:
    """A synchronous request's deadline: ``now + timeout_s``, shortened (never lengthened) by
    the ``X-Deadline-Ms`` header. Raises ValueError naming the problem for a bad header."""
    if header_ms is None or header_ms == "":
        return now + timeout_s
    try:
        ms = float(header_ms)
    except ValueError:
        raise ValueError(
            f"X-Deadline-Ms must be a number of milliseconds, not {header_ms!r}"
        ) from None
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError(f"X-Deadline-Ms must be a positive number of milliseconds, not {ms:g}")
    return now + min(timeout_s, ms / 1000.0)


def expired(ticket: Ticket, now: float) -> bool:
    return now >= ticket.deadline


def retry_after(position: int, exec_s: float, workers: int) -> int:
    """Seconds a refused client should wait before trying again: about the time the requests
    ahead of it (``position``) take to drain through ``workers`` workers at ``exec_s`` each,
    whole seconds, at least :data:`MIN_RETRY_AFTER_S`."""
    estimate = (position + 1) * max(exec_s, 0.0) / max(workers, 1)
    return max(MIN_RETRY_AFTER_S, math.ceil(estimate))


def max_waiting_option(help_text: str, minimum: int = 0):
    """The ``--max-waiting`` command-line option (``brulee up``, ``simulate``, ``testbed``)."""
    import click

    return click.option(
        "--max-waiting",
        type=click.IntRange(min=minimum),
        default=DEFAULT_MAX_WAITING,
        show_default=True,
        help=help_text,
    )
