"""The seed's sampling steps of the trace pipeline, as functions on arrays (no file access).

- ``representative``: FaasCache's representative sample of functions (the seed's
  ``--make_representative``): a few functions drawn from each popularity quantile.
- ``stop_minute``: the seed's early stop by time (``--stop_early``): the window ends at the
  first whole hour by which enough distinct functions or invocations have been seen.
- ``place_even``: the seed's even spread: ALL of a minute's invocations, of every function,
  sit at equal gaps over the minute and are dealt to the functions in random order, so no two
  requests share an instant (unlike spreading each function on its own, which starts every
  active function at the minute's first instant: a synchronised burst).
- ``QpmSampler``: the seed's ``--qpm``: ``qpm × minutes`` requests drawn with replacement from
  the window's requests, streamed chunk by chunk (an exact multinomial split, never the whole
  trace in memory).
"""

from __future__ import annotations

import numpy as np


def representative(
    values: np.ndarray, quantiles: int, per_quantile: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices (ascending) of the functions kept out of per-function totals ``values``.

    The totals' range is cut at ``quantiles`` equal-probability bins (``np.quantile`` at
    0, 1/q, …, 1); from each bin (closed on both sides, so ties at a cut can be drawn from
    either side) ``per_quantile`` functions not yet drawn are drawn at random, or all of them
    when fewer are left. Two details differ from the seed's code: its cuts start at 1/q, which
    leaves the least invoked functions out of every bin but the first cut, and it may draw one
    function in two adjacent bins (then keeps it once); here every function can be drawn and
    each bin gives distinct functions.
    """
    if quantiles < 1 or per_quantile < 1:
        raise ValueError("need at least one quantile and one function from each")
    values = np.asarray(values)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    cuts = np.quantile(values, np.linspace(0.0, 1.0, quantiles + 1))
    taken = np.zeros(len(values), dtype=bool)  # by position in ``ranked``
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        a = int(np.searchsorted(ranked, lo, "left"))
        b = int(np.searchsorted(ranked, hi, "right"))
        pool = a + np.flatnonzero(~taken[a:b])
        if len(pool):
            taken[rng.choice(pool, size=min(per_quantile, len(pool)), replace=False)] = True
    return np.sort(order[taken])


def stop_minute(
    hourly_invocations: np.ndarray,
    first_hours: list[int],
    min_functions: int,
    min_invocations: float,
) -> int | None:
    """Minutes from the window's start to the end of the first whole hour after which more
    than ``min_functions`` distinct functions have been invoked (``first_hours``: each
    function's first hour with an invocation) or more than ``min_invocations`` invocations
    (``hourly_invocations``: per hour) have been read; None when that never happens."""
    n = len(hourly_invocations)
    if not n:
        return None
    funcs = np.cumsum(np.bincount(np.asarray(first_hours, dtype=np.int64), minlength=n)[:n])
    reached = (funcs > min_functions) | (np.cumsum(hourly_invocations) > min_invocations)
    hit = np.flatnonzero(reached)
    return None if not len(hit) else int(hit[0] + 1) * 60


def place_even(
    times: np.ndarray, funcs: np.ndarray, minute_totals: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Spread one time-sorted chunk the seed's way.

    ``times`` are the start (seconds from the window's start, a multiple of 60) of the minute
    each request belongs to; all of a minute's requests are in the chunk. A minute with ``T``
    invocations (``minute_totals``: of every function read, before the filters and any
    downsampling) has slots ``k·60/T``; its ``k ≤ T`` requests (fewer when functions were
    filtered out or requests thinned: the seed spreads, then drops) take ``k`` slots drawn at
    random, and the functions are dealt to them in random order.
    """
    if not len(times):
        return times, funcs
    order = np.lexsort((rng.random(len(times)), times))  # shuffle within each minute
    times, funcs = times[order], funcs[order]
    starts = np.r_[0, np.flatnonzero(np.diff(times)) + 1]
    sizes = np.diff(np.r_[starts, len(times)])
    totals = minute_totals[np.rint(times[starts] / 60.0).astype(np.int64)]
    if np.any(sizes > totals):
        raise ValueError("place_even: a minute has more requests than its invocation count")
    slots = np.arange(len(times)) - np.repeat(starts, sizes)  # all slots when none is thinned
    for a, k, total in zip(starts.tolist(), sizes.tolist(), totals.tolist()):
        if k < total:
            slots[a : a + k] = np.sort(rng.choice(total, size=k, replace=False))
    return times + slots * (60.0 / np.repeat(totals, sizes)), funcs


class QpmSampler:
    """Draw ``target`` of ``total`` requests uniformly with replacement, chunk by chunk.

    Each chunk of ``n`` requests gets ``Binomial(left, n / remaining)`` draws (the exact
    multinomial split, sequentially), spread uniformly over the chunk; a request drawn twice
    appears twice (the seed's ``rng.choice(events, size)``). Chunks must come in time order
    and be sorted; so is the output.
    """

    def __init__(self, target: int, total: int, rng: np.random.Generator) -> None:
        if target < 0 or total < 0:
            raise ValueError("target and total must be >= 0")
        self.left, self.remaining, self.rng = target, total, rng

    def take(self, times: np.ndarray, funcs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(times)
        if not n or self.remaining <= 0:
            return times[:0], funcs[:0]
        m = self.left if n >= self.remaining else self.rng.binomial(self.left, n / self.remaining)
        self.remaining -= n
        self.left -= m
        idx = np.sort(self.rng.integers(0, n, size=m))
        return times[idx], funcs[idx]
