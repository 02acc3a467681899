"""One loader for model cost profiles, shared by the pipeline's pairing and the simulator.

Accepts both documents the project meets:

- brulee's own profiles (``brulee models profile``: ``{"models": [...]}`` whose records carry
  the seed's field names next to brulee's, see ``models.profile.with_seed_fields``), and
- the seed's ``models.m5.json`` (a plain list; ``loaded_size`` is 0 for every model, so sizes
  must be supplied with ``sizes=`` or ``default_bytes=``).

Return type: ``dict[str, ModelCost]`` — per model name, ``ModelCost(load_s, exec_s, bytes,
unload_s)``; ``bytes`` is ``None`` when the document has no positive size and none was
supplied (callers that need sizes pass ``require_bytes=True`` to get a clear error instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple


class ModelCost(NamedTuple):
    load_s: float  # a miss: load (plus first-invoke overhead for brulee's profiles)
    exec_s: float  # a warm execution
    bytes: int | None  # memory while loaded; None when unknown
    unload_s: float  # evicting it


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the model."""


def _number(path: Path, name: str, rec: Mapping, *keys: str) -> float | None:
    for key in keys:
        if key in rec and rec[key] is not None:
            try:
                value = float(rec[key])
            except (TypeError, ValueError):
                raise ProfileError(
                    f"{path}: model {name!r}: {key}={rec[key]!r} is not a number"
                ) from None
            if value < 0:
                raise ProfileError(f"{path}: model {name!r}: {key}={value} is negative")
            return value
    return None


def load_profiles(
    path: str | os.PathLike,
    sizes: Mapping[str, int] | None = None,
    default_bytes: int | None = None,
    require_bytes: bool = False,
    page_cache: str = "cold",
) -> dict[str, ModelCost]:
    """Read ``path`` into ``{model name: ModelCost}``.

    ``page_cache="cold"`` (default): a miss costs the profile's miss penalty, the file read
    from a dropped page cache plus the first invoke's extra (``avg_load_latency``).
    ``"warm"``: the file is still in the page cache (a device with memory to spare, a model
    evicted and reloaded), and the load is what the agent reports in ``X-Load-Seconds``:
    opening the interpreter (``warm_load_s``); the first invoke's extra lands in that request's
    execution. Records without ``warm_load_s`` (the seed's) keep their load.

    Sizes: a positive ``loaded_size``/``loaded_bytes`` in the file wins; else ``sizes[name]``,
    or ``sizes[copy_of]`` for a record ``brulee trace workload --distinct-models`` copied from
    another model; else ``default_bytes``; else ``None`` (or a ProfileError when ``require_bytes``).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    records = doc if isinstance(doc, list) else doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records:
        raise ProfileError(f"{path}: expected a list of models or {{'models': [...]}}")
    out: dict[str, ModelCost] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not rec.get("name"):
            raise ProfileError(f"{path}: record {i} has no 'name'")
        name = str(rec["name"])
        if page_cache not in ("cold", "warm"):
            raise ValueError(f"page_cache must be 'cold' or 'warm', not {page_cache!r}")
        keys = ("avg_load_latency", "cold_load_s", "load_s")
        if page_cache == "warm":
            keys = ("warm_load_s", *keys)
        load = _number(path, name, rec, *keys)
        exe = _number(path, name, rec, "avg_exec_latency", "exec_s")
        if load is None or exe is None:
            raise ProfileError(
                f"{path}: model {name!r}: needs avg_load_latency and avg_exec_latency"
            )
        unload = _number(path, name, rec, "avg_unload_latency", "unload_s") or 0.0
        size = _number(path, name, rec, "loaded_size", "loaded_bytes", "bytes")
        nbytes: int | None = int(size) if size else None
        if nbytes is None and sizes:  # by name, else by the model a copy was made of
            known = [sizes[k] for k in (name, rec.get("copy_of")) if k in sizes]
            nbytes = int(known[0]) if known else None
        if nbytes is None:
            nbytes = default_bytes
        if nbytes is None and require_bytes:
            raise ProfileError(
                f"{path}: model {name!r} has no size (loaded_size 0): supply sizes or a default"
            )
        out[name] = ModelCost(load, exe, nbytes, unload)
    return out


SEED_PROFILES = Path(__file__).parent / "data" / "models.m5.json"
