"""Reading the agent's ``/system/cache`` answer: memory used, cap and the workers' resident
memory, summed over devices, whatever the answer's nesting.

Its own module because both the replay (``loadgen.replay``, which polls it during a run) and the
simulated replay (``loadgen.replay_sim``, which takes the agent's cap from it) read it, and the
replay imports the simulated replay: this keeps the imports one-way.
"""

from __future__ import annotations

MEMORY_KEYS = {
    "used": ("used_bytes", "bytes_used", "used"),
    "cap": ("cap_bytes", "capacity_bytes", "cap"),
    "rss": ("rss_bytes",),
    "baseline": ("baseline_rss_bytes",),
}


def memory_totals(cache: object) -> dict[str, float]:
    """Bytes used, cap, the workers' resident memory and their baseline, summed over devices,
    from a ``/system/cache`` answer (tolerant of its shape)."""
    sums = dict.fromkeys(MEMORY_KEYS, 0.0)
    names = {k: field for field, keys in MEMORY_KEYS.items() for k in keys}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if key in names:
                        sums[names[key]] += value
                elif key != "workers":  # workers repeat the device totals
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(cache.get("devices", cache) if isinstance(cache, dict) else cache)
    return sums


def memory_bytes(cache: object) -> tuple[float, float]:
    """(bytes used, cap) summed over devices."""
    m = memory_totals(cache)
    return m["used"], m["cap"]
