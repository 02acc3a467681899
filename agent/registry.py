"""The function registry (Redis hash ``functions``; each gateway process keeps a copy, dropped
when the registry's version changes), the models directory's profiles, and the facts placement
accounts a model with."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import redis

from agent.errors import ApiError
from agent.keys import key
from agent.placement import ModelFacts
from agent.staged import staged_facts


def _function_doc(fn: Any) -> dict[str, Any]:
    doc = asdict(fn) if is_dataclass(fn) else dict(fn)
    return json.loads(json.dumps(doc, default=str))


def _as_list(found: Any) -> list[Any]:
    return list(found.values()) if isinstance(found, dict) else list(found)


class Registry:
    """Functions deployed on this agent, kept in the Redis hash ``brulee:functions``."""

    def __init__(self, conn: redis.Redis, models_dir: Path, functions_file: str | None) -> None:
        self.r = conn
        self.models_dir = models_dir
        self.functions_file = functions_file
        self._handlers: dict[str, tuple[str, Any]] = {}
        self._docs: dict[str, dict[str, Any]] = {}  # this process's copy, valid for _version
        self._version: bytes | None = None

    def ensure_loaded(self) -> None:
        """Seed the registry from the stack file (or every model) once per Redis database; a
        lock makes concurrent first requests wait for the seeding instead of answering 404."""
        if self.r.exists(key("functions", "seeded")):
            return
        with self.r.lock(key("functions", "seeding"), timeout=120, blocking_timeout=120):
            if self.r.exists(key("functions", "seeded")):
                return
            from functions import stack
            from models.catalog import load_catalog

            if self.functions_file:
                catalog = load_catalog(self.models_dir)
                found = stack.load_stack(self.functions_file, self.models_dir, catalog)
            else:
                found = stack.zero_config(self.models_dir)
            for fn in _as_list(found):
                self.deploy(_function_doc(fn))
            self.r.set(key("functions", "seeded"), 1)

    def deploy(self, doc: dict[str, Any]) -> dict[str, Any]:
        from functions.stack import model_path

        name = doc["name"]
        try:
            path = model_path(self.models_dir, doc["file"])
            problem = None if Path(path).is_file() else f"model file {doc['file']} does not exist"
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        pipe = self.r.pipeline()
        pipe.hset(key("functions"), name, json.dumps(doc))
        if problem:
            pipe.hset(key("failed"), name, problem)
        else:
            pipe.hdel(key("failed"), name)
        pipe.incr(key("functions", "version"))
        pipe.execute()
        return doc

    def remove(self, name: str) -> bool:
        pipe = self.r.pipeline()
        pipe.hdel(key("functions"), name)
        pipe.hdel(key("failed"), name)
        pipe.incr(key("functions", "version"))
        return bool(pipe.execute()[0])

    def get(self, name: str, verify: bool = True) -> dict[str, Any]:
        """The function's document, or 404; 503 with the reason if its model failed to load.
        One round trip when this process's copy is current; none with ``verify=False`` (the
        caller checks the version and the failed flag itself: the hit script does)."""
        if not verify and name in self._docs:
            return self._docs[name]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(key("functions", "version"))
        pipe.hget(key("failed"), name)
        version, reason = pipe.execute()
        if version != self._version:
            self._docs, self._version = {}, version
        doc = self._docs.get(name)
        if doc is None:
            raw = self.r.hget(key("functions"), name)
            if raw is None and not self.r.exists(key("functions", "seeded")):
                self.ensure_loaded()
                raw = self.r.hget(key("functions"), name)
            if raw is None:
                raise ApiError(
                    404, f"function {name!r} is not deployed (see GET /system/functions)"
                )
            doc = self._docs[name] = json.loads(raw)
        if reason is not None:
            raise ApiError(503, f"function {name!r} failed: {reason.decode()}")
        return doc

    @property
    def version(self) -> bytes | None:
        """The registry version this process's copy was read at."""
        return self._version

    def forget(self) -> None:
        """Drop this process's copy (the registry changed)."""
        self._docs, self._version = {}, None

    def changed(self) -> bool:
        """Whether the registry changed since this process's copy was read (then dropped)."""
        if self.r.get(key("functions", "version")) == self._version:
            return False
        self.forget()
        return True

    def all(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(key("functions")).items()}

    def handler(self, doc: dict[str, Any]) -> Any:
        from functions.handlers import make_handler

        spec = json.dumps([doc["handler"], doc.get("options"), doc.get("record")], sort_keys=True)
        cached = self._handlers.get(doc["name"])
        if cached is None or cached[0] != spec:
            handler = make_handler(
                doc["handler"], doc.get("record") or {}, **(doc.get("options") or {})
            )
            cached = self._handlers[doc["name"]] = (spec, handler)
        return cached[1]


class Profiles:
    """The models directory's ``profiles.json`` (``brulee models profile``), re-read when it
    changes; empty when there is none."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / "profiles.json"
        self._stamp: float | None = None
        self._records: dict[str, dict[str, Any]] = {}

    def get(self, model: str) -> dict[str, Any] | None:
        from models.profile import read_profiles

        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            return None
        if stamp != self._stamp:
            try:
                self._records = read_profiles(self.path)
            except (ValueError, KeyError, TypeError):
                self._records = {}
            self._stamp = stamp
        return self._records.get(model)


def model_facts(
    conn: redis.Redis, doc: dict[str, Any], models_dir: Path, profile: dict[str, Any] | None
) -> tuple[ModelFacts, bool]:
    """Bytes and times placement accounts with, and whether the bytes come from a profile.

    Bytes: the profile's loaded bytes (measured in a fresh process) when there is one, raised
    to what a worker measured if that was more (a worker also holds the request's tensors
    while the model runs); without a profile, what a worker observed when it loaded the model,
    else the memory hint, else twice the file size (weights plus arena, roughly). A worker's
    resident-memory delta never *lowers* a profile: in a long-lived process the allocator
    reuses pages freed by earlier evictions, so the delta can be far below what the model
    really holds."""
    record = doc.get("record") or {}
    stats = {k.decode(): v.decode() for k, v in conn.hgetall(key("stats", doc["model"])).items()}
    profile = profile or {}
    if profile.get("loaded_bytes"):
        size = max(int(profile["loaded_bytes"]), int(stats.get("bytes") or 0))
    else:
        size = (
            stats.get("bytes")
            or record.get("loaded_bytes")
            or doc.get("memory")
            or 2 * int(record.get("file_bytes") or (models_dir / doc["file"]).stat().st_size)
        )
    facts = ModelFacts(
        doc["model"],
        int(size),
        float(stats.get("load_s") or profile.get("avg_load_latency") or 0.05),
        float(stats.get("exec_s") or profile.get("exec_s") or record.get("exec_s") or 0.01),
    )
    staged = staged_facts(conn, doc, models_dir, facts)  # served from stage files instead?
    if staged is not facts:
        return staged, True  # its bytes are the manifest's, not a guess to correct
    return facts, bool(profile.get("loaded_bytes"))
