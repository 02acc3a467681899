"""Prometheus metrics kept in Redis: workers count what they serve (they measure the timings),
and every gateway process exports the same numbers at scrape time."""

from __future__ import annotations

from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from agent import jobs, waiting
from agent.keys import key
from agent.placement import Placement
from agent.snapshot import snapshot

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def observe(pipe: redis.client.Pipeline, function: str, result: dict[str, Any]) -> None:
    """Count a served invocation and add its latencies to the Redis-held histograms; the worker
    that measured them adds this to the pipeline that answers (the caller executes it)."""
    pipe.hincrby(key("invocations"), f"{function}|{result['cache']}", 1)
    total = 0.0
    for kind in ("load_s", "exec_s", "queue_s"):
        value = float(result.get(kind) or 0.0)
        if kind == "load_s" and result["cache"] == "hit":
            continue
        total += value
        pipe.hincrbyfloat(key("latency"), f"{function}|{kind[:-2]}", value)
        bucket = next((str(b) for b in BUCKETS if value <= b), "+Inf")
        pipe.hincrby(key("hist", kind), bucket, 1)
        pipe.hincrbyfloat(key("hist", kind), "sum", value)
    pipe.hincrbyfloat(key("latency"), f"{function}|total", total)


def per_function(
    r: redis.Redis, hash_: str, name: str, doc: str, label: str, cast
) -> CounterMetricFamily:
    """A counter by function and ``label`` from a Redis hash of ``function|value`` fields."""
    family = CounterMetricFamily(name, doc, labels=["function", label])
    for field_, n in r.hgetall(key(hash_)).items():
        family.add_metric(list(field_.decode().rsplit("|", 1)), cast(n))
    return family


class RedisCollector:
    """Prometheus metrics read from Redis at scrape time, so every gunicorn process agrees."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def collect(self):
        r = self.placement.r
        yield per_function(
            r, "invocations", "brulee_invocations", "Invocations by function and cache result",
            "cache", int,
        )  # fmt: skip
        yield per_function(
            r, "latency", "brulee_function_seconds",
            "Seconds spent per function (divide by brulee_invocations_total for the mean)",
            "kind", float,
        )  # fmt: skip
        for kind in ("load_s", "exec_s", "queue_s", "admission_s"):
            raw = {k.decode(): float(v) for k, v in r.hgetall(key("hist", kind)).items()}
            acc, buckets = 0.0, []
            edges = waiting.BUCKETS if kind == "admission_s" else BUCKETS
            for b in (*map(str, edges), "+Inf"):
                acc += raw.get(b, 0.0)
                buckets.append((b, acc))
            what = "wait for memory (admission queue)" if kind == "admission_s" else "latency"
            h = HistogramMetricFamily(
                f"brulee_{kind[:-2]}_wait_seconds" if kind == "admission_s"
                else f"brulee_{kind[:-2]}_seconds", f"{kind[:-2]} {what} of invocations"
            )  # fmt: skip
            h.add_metric([], buckets, sum_value=raw.get("sum", 0.0))
            yield h
        snap = snapshot(self.placement)
        used = GaugeMetricFamily(
            "brulee_cache_used_bytes", "Bytes of loaded models", labels=["device"]
        )
        cap = GaugeMetricFamily("brulee_cache_cap_bytes", "Memory cap", labels=["device"])
        ev = CounterMetricFamily(
            "brulee_evictions", "Evictions by policy", labels=["device", "policy"]
        )
        queued = GaugeMetricFamily(
            "brulee_admission_waiting", "Requests waiting for memory", labels=["device"]
        )
        adm = CounterMetricFamily(
            "brulee_admission",
            "Admission outcomes (admitted, timed_out, refused)",
            labels=["device", "outcome"],
        )
        rss = GaugeMetricFamily(
            "brulee_resident_bytes",
            "Resident memory of the device's workers (sum), and before any model (baseline)",
            labels=["device", "when"],
        )
        for device, d in snap["devices"].items():
            rss.add_metric([device, "now"], d["rss_bytes"])
            rss.add_metric([device, "baseline"], d["baseline_rss_bytes"])
            queued.add_metric([device], len(d["admission"]["waiting"]))
            for outcome in ("admitted", "timed_out", "refused"):
                adm.add_metric([device, outcome], d["admission"].get(outcome, 0))
            used.add_metric([device], d["used_bytes"])
            cap.add_metric([device], d["cap_bytes"])
            for policy, n in d["evictions"].items():
                ev.add_metric([device, policy], n)
        yield used
        yield cap
        yield rss
        yield ev
        yield queued
        yield adm
        now = GaugeMetricFamily(
            "brulee_async_jobs", "Async jobs waiting or running now", labels=["function", "state"]
        )
        ended = CounterMetricFamily(
            "brulee_async_job_outcomes",
            "Async jobs retried (their worker died running them), finished, failed",
            labels=["function", "outcome"],
        )
        for function, n in snap["jobs"].items():
            for state in jobs.GAUGES:
                now.add_metric([function, state], max(n[state], 0))
            for outcome in jobs.COUNTERS:
                ended.add_metric([function, outcome], n[outcome])
        yield now
        yield ended
