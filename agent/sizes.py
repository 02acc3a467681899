"""One size syntax for every command and file: memory caps and memory hints.

- plain number: bytes (``400000000``, ``4e8``);
- ``K``/``M``/``G`` (or ``KB``/``MB``/``GB``): powers of 1,000 (``400M`` = 400,000,000 bytes);
- ``Ki``/``Mi``/``Gi`` (or ``KiB``/``MiB``/``GiB``): powers of 1,024 (``400Mi`` = 400 × 2²⁰);
- ``PCT%``: where an option allows it, a percentage of a base its help names (the device's
  RAM for ``brulee up``, the workload's working set for ``brulee testbed`` and ``simulate``).

Suffixes are case-insensitive and may be separated from the number by spaces. Before this
syntax, ``brulee up``/``worker --memory-cap`` read ``K``/``M``/``G`` as powers of 1,024: such
an option passes ``was_binary=True`` and refuses a bare ``K``/``M``/``G`` with a message
saying so, rather than silently reading the same text as a different size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# at least one byte ("0.5G" is written "500M"), spaces allowed; the API schema uses the same
# pattern (plain spaces: Python's and ECMAScript's \s differ)
SIZE_PATTERN = r" *(0*[1-9][0-9]*(?:\.[0-9]+)?(?:[eE]\+?[0-9]+)?) *([kKmMgG]i?)?[bB]? *"
SIZE_RE = re.compile(SIZE_PATTERN)
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}
MAX_SIZE = 2**63  # Redis' integers (the cap is stored there)
ACCEPTED = "bytes (400000000), 400M or 400MB (10^6), 400Mi or 400MiB (2^20), K/G alike"


class SizeError(ValueError):
    """A size that does not parse; the message names the value and what is accepted."""


def parse_size(
    value: Any,
    *,
    what: str = "size",
    percent_of: Callable[[], int] | int | None = None,
    was_binary: bool = False,
) -> int:
    """Bytes (> 0) from an int or a size string (the module's syntax). ``percent_of`` (bytes,
    or a function returning them, called only for a ``%``) allows ``PCT%`` in (0, 100]."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value < MAX_SIZE:
            raise SizeError(f"{what} must be at least 1 byte and below 2^63, got {value}")
        return value
    if not isinstance(value, str):
        raise SizeError(f"{what} must be {ACCEPTED}; got {value!r:.80}")
    text = value.strip(" ")  # plain spaces, as the pattern (and the API schema) allows
    if text.endswith("%"):
        return _percent(text, what, percent_of)
    m = SIZE_RE.fullmatch(text)
    if not m:
        pct = " or PCT%" if percent_of is not None else ""
        raise SizeError(f"{what} {value!r:.80} is not a size: expected {ACCEPTED}{pct}")
    unit = (m.group(2) or "").lower()
    if was_binary and unit in ("k", "m", "g") and not text.lower().endswith("b"):
        n = m.group(1)
        raise SizeError(
            f"{what} {value!r}: {unit.upper()} here used to mean a power of 1,024 and now means "
            f"a power of 1,000 (as everywhere in brulee); write {n}{unit.upper()}iB for "
            f"{n} × {1024 ** ' kmg'.index(unit)} bytes or {n}{unit.upper()}B for "
            f"{n} × {UNITS[unit]}"
        )
    size = float(m.group(1)) * UNITS[unit]
    if not size < MAX_SIZE:
        raise SizeError(f"{what} {value!r:.80} is too large (at most 2^63 - 1 bytes)")
    size = int(size)
    if size <= 0:
        raise SizeError(f"{what} must be at least 1 byte, got {value!r}")
    return size


def _percent(text: str, what: str, percent_of: Callable[[], int] | int | None) -> int:
    if percent_of is None:
        raise SizeError(f"{what} {text!r}: a percentage is not accepted here; expected {ACCEPTED}")
    try:
        pct = float(text[:-1])
    except ValueError:
        raise SizeError(f"{what} {text!r} is not a percentage (e.g. 50%)") from None
    if not 0 < pct <= 100:
        raise SizeError(f"{what} {text!r}: a percentage must be in (0, 100]")
    base = percent_of() if callable(percent_of) else percent_of
    return max(1, int(base * pct / 100))


def device_ram() -> int:
    """This device's total RAM in bytes (``MemTotal`` of /proc/meminfo)."""
    with open("/proc/meminfo") as fh:
        total_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return total_kb * 1024
