"""A synthetic Azure-like workload, calibrated to the published 2019-trace statistics.

API (used by ``brulee trace synth`` and the simulator):

- ``synth_functions(functions, hours, seed) -> list[SynthFunction]``: the plan — each
  function's name (``f00000``…), daily rate, whether it is a timer, and its exact request count
  over the window. Cheap: O(functions).
- ``synth_chunks(plan, hours, seed) -> Iterator[(times float64[], function indices int32[])]``:
  the requests in time order, one hour block at a time (memory bounded by one block).
- ``synth_requests(functions, hours, seed, pairing=None) -> Iterator[Request]``: the same as
  workload-file requests; ``pairing`` maps the synthetic function name to a model name (see
  ``loadgen.pairing.pair``), else the request's function is the synthetic name. To pair with
  a profile file::

      plan = synth_functions(n, hours, seed)
      costs = load_profiles(path)  # loadgen.profiles
      mapping = pair({f.name: f.count for f in plan}, sorted(costs), "quantiles", profiles=costs)
      write_workload(out, synth_requests(n, hours, seed, mapping))

Requests per function are exact for non-timers; a timer's count depends on its phase (±1).
Scale: the top shares make the total about 6,000 requests/day per function (N=300, 24 h:
~1.8 M requests; ~3.7 s and ~55 MB RSS for ``brulee trace synth`` to a CSV).

How the targets of ``docs/spec/workload.md`` are met (``brulee trace stats`` measures them):

- Daily rates: function ``i`` of ``N`` sits at CDF position ``u = (i + U)/N`` (stratified, so
  the CDF matches even for a few hundred functions) and gets the rate of the published CDF
  knots, interpolated log-linearly. The top 0.1 %/1 %/10 % of functions (``ceil(q·N)``
  functions each, so at least one) are then rescaled so that they receive 65/90/99 % of all
  requests — the CDF alone does not pin the tail.
- Timers: the bottom 35 % (one request a day) are half timers; of the functions with
  12–1,440 requests a day, a fraction ``TIMER_SHARE`` become timers whose rate is snapped up to
  the next of 24/48/96/288/1,440 a day (never across a CDF knot). Timers fire with a fixed
  period from a random phase (CV 0) and ignore the diurnal swing.
- Other functions get exactly ``round(rate·hours/24)`` requests (stochastic rounding) with
  gaps drawn as a Dirichlet split of the window with shape 1/cv² (gap CV ≈ cv, drawn
  per function from ``GAP_CV``); this is
  generated block by block by stick-breaking, so no function's whole sequence is ever held.
- Diurnal: non-timer requests live in an "operational" time that is warped by the rate
  ``1 + 0.15·sin(2π(t/day − 1/3))`` (peak in the afternoon, trough early morning).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from loadgen.workload_file import Request

DAY = 86400.0
CDF_KNOTS = (
    (0.35, 1.0),
    (0.57, 10.0),
    (0.64, 24.0),
    (0.83, 288.0),
    (0.93, 1440.0),
    (0.995, 86400.0),
)
# Generation knots: the targets, with the one-a-day atom a little lower because rates just
# above 1/day round down to one request about half the time (measured CDF at 1 then ~0.35).
GEN_KNOTS = ((0.32, 1.0),) + CDF_KNOTS[1:]
TOP_SHARES = ((0.001, 0.65), (0.01, 0.90), (0.10, 0.99))
TIMER_RATES = (24.0, 48.0, 96.0, 288.0, 1440.0)
TIMER_SHARE = 0.6  # of functions with 12..1440 requests a day
GAP_CV = (2.2, 0.7)  # non-timer gap CV: lognormal (median, sigma); measured median ~1.5-2
DIURNAL = 0.15
BLOCK_S = 3600.0


class SynthFunction(NamedTuple):
    name: str
    rate_per_day: float
    timer: bool
    count: int  # requests in the window
    cv: float  # target gap CV of a non-timer function (0 for timers)


def _rates(n: int, rng: np.random.Generator) -> np.ndarray:
    """Daily rates, most popular first, matching the CDF knots and the top shares."""
    u = 1.0 - (np.arange(n) + rng.random(n)) / n  # descending CDF positions
    knots_u = np.array([0.0] + [k[0] for k in GEN_KNOTS] + [1.0])
    knots_r = np.log10([1.0] + [k[1] for k in GEN_KNOTS] + [GEN_KNOTS[-1][1] * 20])
    rates = 10 ** np.interp(u, knots_u, knots_r)
    bounds = [math.ceil(q * n) for q, _ in TOP_SHARES]
    if bounds[-1] >= n:
        return rates
    rest = rates[bounds[-1] :].sum()
    total = rest / (1.0 - TOP_SHARES[-1][1])
    lo, prev_share = 0, 0.0
    for (_, share), hi in zip(TOP_SHARES, bounds):
        if hi > lo:
            group = rates[lo:hi]
            rates[lo:hi] = group * ((share - prev_share) * total / group.sum())
        lo, prev_share = hi, share
    return rates


def synth_functions(functions: int, hours: float, seed: int) -> list[SynthFunction]:
    """The plan of a synthetic workload (see the module docstring)."""
    if functions < 1:
        raise ValueError(f"functions must be >= 1, got {functions}")
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    rng = np.random.default_rng(seed)
    rates = _rates(functions, rng)
    timer = np.zeros(functions, dtype=bool)
    once = rates <= 1.0
    timer[once] = rng.random(int(once.sum())) < 0.5
    mid = (rates > 12.0) & (rates <= TIMER_RATES[-1])
    # Exactly TIMER_SHARE of them (stratified, not coin flips: the CV medians depend on it).
    mids = np.flatnonzero(mid)
    pick = np.zeros(functions, dtype=bool)
    pick[mids[rng.permutation(len(mids))[: int(round(len(mids) * TIMER_SHARE))]]] = True
    idx = np.searchsorted(TIMER_RATES, rates[pick] - 1e-9)
    rates[pick] = np.asarray(TIMER_RATES)[idx]
    timer |= pick
    expect = rates * hours / 24.0
    counts = np.floor(expect + rng.random(functions)).astype(np.int64)
    width = len(str(functions - 1))
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf((j + 0.5) / functions) for j in range(functions)])
    cv = GAP_CV[0] * np.exp(GAP_CV[1] * rng.permutation(z))  # stratified lognormal
    cv = np.where(timer, 0.0, np.clip(cv, 0.3, 5.0))  # extreme shapes underflow the beta draws
    order = rng.permutation(functions)  # names carry no popularity rank
    return [
        SynthFunction(
            f"f{int(order[i]):0{width}d}",
            float(rates[i]),
            bool(timer[i]),
            int(counts[i]),
            float(cv[i]),
        )
        for i in range(functions)
    ]


def _warp_tables(window: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid of (real time, operational time) for the diurnal rate warp."""
    t = np.linspace(0.0, window, max(2, int(window / 60.0) + 1))
    phase = -2 * math.pi / 3
    w = 2 * math.pi / DAY
    tau = t - DIURNAL / w * (np.cos(w * t + phase) - math.cos(phase))
    return t, tau / tau[-1] * window  # normalise so operational time spans the same window


def synth_chunks(
    plan: list[SynthFunction], hours: float, seed: int, block_s: float = BLOCK_S
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Requests of ``plan`` in time order, a block at a time: (times, indices into plan)."""
    rng = np.random.default_rng([seed, 1])
    window = hours * 3600.0
    grid_t, grid_tau = _warp_tables(window)
    last_t = float(np.nextafter(window, 0.0))  # rounding may put 1 - cumprod at exactly 1
    n = len(plan)
    timer = np.array([f.timer for f in plan], dtype=bool)
    counts = np.array([f.count for f in plan], dtype=np.int64)
    period = np.where(timer, DAY / np.maximum([f.rate_per_day for f in plan], 1e-12), 0.0)
    phase = rng.random(n) * period
    # Non-timer state: position in operational time, arrivals still to place (gaps = left+1).
    pos = np.zeros(n)
    left = np.where(timer, 0, counts)
    pend = np.full(n, math.nan)  # an arrival already drawn, beyond the last block's end
    shape = [1.0 / max(f.cv, 1e-3) ** 2 for f in plan]
    active = [i for i in range(n) if not timer[i] and counts[i] > 0]
    timers = [i for i in range(n) if timer[i]]
    start = 0.0
    while start < window:
        end = min(start + block_s, window)
        end_tau = float(np.interp(end, grid_t, grid_tau))
        times: list[np.ndarray] = []
        funcs: list[np.ndarray] = []
        for i in timers:
            first = phase[i] + math.ceil((start - phase[i]) / period[i]) * period[i]
            ts = np.arange(first, end, period[i])
            if len(ts):
                times.append(ts)
                funcs.append(np.full(len(ts), i, dtype=np.int32))
        still = []
        for i in active:
            got: list[np.ndarray] = []
            if not math.isnan(pend[i]):  # the arrival drawn past an earlier block's end
                if pend[i] >= end_tau and end < window:
                    still.append(i)
                    continue
                got.append(np.array([pend[i]]))
                pend[i] = math.nan
            while left[i] > 0:
                span = window - pos[i]
                expect = left[i] * (end_tau - pos[i]) / span if span > 0 else left[i]
                m = int(min(left[i], max(expect, 0.0) * 1.5 + 8))
                gaps = left[i] + 1 - np.arange(m)  # gaps remaining before each draw
                beta = rng.beta(shape[i], (gaps - 1) * shape[i])
                ts = pos[i] + span * (1.0 - np.cumprod(1.0 - beta))
                n_in = len(ts) if end >= window else int(np.searchsorted(ts, end_tau))
                used = min(len(ts), n_in + 1)  # arrivals inside, plus the first one past
                if n_in:
                    got.append(ts[:n_in])
                pos[i] = ts[used - 1]
                left[i] -= used
                if used > n_in:
                    pend[i] = ts[n_in]
                    break
            if got:
                tau = np.concatenate(got)
                times.append(np.minimum(np.interp(tau, grid_tau, grid_t), last_t))
                funcs.append(np.full(len(tau), i, dtype=np.int32))
            if left[i] > 0 or not math.isnan(pend[i]):
                still.append(i)
        active = still
        if times:
            t = np.concatenate(times)
            f = np.concatenate(funcs)
            order = np.argsort(t, kind="stable")
            yield t[order], f[order]
        start = end


def synth_requests(
    functions: int, hours: float, seed: int, pairing: Mapping[str, str] | None = None
) -> Iterator[Request]:
    """Stream workload requests; ``pairing`` maps synthetic function names to model names."""
    plan = synth_functions(functions, hours, seed)
    names = [f.name for f in plan]
    target = [pairing[n] if pairing else n for n in names]
    rid = 0
    for times, funcs in synth_chunks(plan, hours, seed):
        for t, i in zip(times.tolist(), funcs.tolist()):
            yield Request(t, target[i], str(rid), names[i])
            rid += 1
