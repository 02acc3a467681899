"""Layer-wise loading: run a model from its stage files (``models.stages``) under a policy.

The loading policies of EdgeCaffe and MemA:

- ``bulk``: open every stage, then run them in turn; the stages stay open between calls, like
  a whole model's interpreter (its memory: every stage's).
- ``linear``: open stage 1, run it, drop it, open stage 2, ... (its memory: the largest stage).
- ``interleaved``: a loader thread opens stage i+1 while stage i runs, each stage dropped once
  it ran (its memory: the two largest stages).

``linear`` and ``interleaved`` *stream* the model: nothing of it stays between calls (unless
``keep`` first stages are kept open), so a model whose whole does not fit in the free memory
still runs. Stage loads are admitted by MemA's rule: a load starts only when its memory is
free within the copy's budget, and executions never wait for memory (:class:`ByteGate`).

How the agent uses it. A staged copy is a copy of its own, named ``MODEL@stages-POLICY``,
so placement, eviction and the worker's interpreters need nothing new: placement reserves
the policy's bytes (:func:`reservation`) for it, and the worker opens it with
:func:`open_staged`. The gateway serves a function staged (:func:`staged_facts`) when its
stack entry says ``stages: POLICY``, or — with ``interleaved`` — when its whole model is larger
than every device's cap and a stage manifest sits next to its file (it answered 507 before).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.memory import release_memory
from agent.runtime import LoadedModel, TensorSpec, load_model

POLICIES = ("bulk", "linear", "interleaved")
STREAMING = "interleaved"  # the policy a model too large for every cap is served with
_MARK = "@stages-"
MANIFEST = "manifest.json"  # models.stages.MANIFEST (the agent does not import the builder)


def manifest_file(file: str) -> str:
    """Where the builder puts the stage manifest of the model file ``file`` (relative to the
    models directory): ``x.tflite`` -> ``x.stages/manifest.json``."""
    return str(Path(file).with_suffix(".stages") / MANIFEST)


def staged_name(model: str, policy: str) -> str:
    return f"{model}{_MARK}{policy}"


def parse_staged(model: str) -> tuple[str, str] | None:
    """``(model, policy)`` of a staged copy's name, None for a whole model."""
    base, mark, policy = model.rpartition(_MARK)
    return (base, policy) if mark and policy in POLICIES else None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    from models.stages import read_manifest as read

    return read(path)


def stage_bytes(manifest: dict[str, Any]) -> list[int]:
    """Bytes each open stage is accounted with: twice its file (weights and tensor arena), the
    rule the agent applies to any model it has not profiled (:func:`agent.registry.model_facts`)."""
    return [2 * int(s["file_bytes"]) for s in manifest["stages"]]


def reservation(
    manifest: dict[str, Any], policy: str, keep: int = 0, per_file_byte: float = 2.0
) -> int:
    """Bytes a staged copy holds at its peak under ``policy`` (plus ``keep`` cached first
    stages): what placement reserves for it. ``per_file_byte``: what a stage holds per byte of
    its file; the agent passes the whole model's ratio (from its profile when it has one)."""
    sizes = [int(per_file_byte * int(s["file_bytes"])) for s in manifest["stages"]]
    if policy == "bulk":
        return sum(sizes)
    kept = sum(sizes[:keep])
    rest = sorted(sizes[keep:], reverse=True)
    return kept + sum(rest[: 1 if policy == "linear" else 2])


class ByteGate:
    """MemA's admission for stage loads within a budget of bytes: :meth:`acquire` waits until
    the load's bytes are free (a single stage larger than the budget is let in alone, else it
    would never run); releasing happens when a stage that ran is dropped. Executions never
    pass through it, so they never wait for memory."""

    def __init__(self, budget: int) -> None:
        self.budget, self.held = budget, 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.held == 0 or self.held + size <= self.budget)
            self.held += size

    def release(self, size: int) -> None:
        with self._cond:
            self.held -= size
            self._cond.notify_all()

    def open_wide(self) -> None:
        """Admit every load from now on (the run they were for has ended)."""
        with self._cond:
            self.budget = float("inf")
            self._cond.notify_all()


def _spec(stage: dict[str, Any], side: str) -> TensorSpec:
    return TensorSpec(side, tuple(stage[f"{side}_shape"]), np.dtype(stage[f"{side}_dtype"]))


class StagedModel:
    """A model run stage by stage; serves like :class:`agent.runtime.LoadedModel`
    (``input``, ``output``, ``predict``, ``close``). Not thread-safe, like an interpreter."""

    def __init__(
        self,
        models_dir: str | os.PathLike,
        manifest: str | os.PathLike,
        policy: str,
        num_threads: int = 1,
        keep: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown loading policy {policy!r}; valid: {', '.join(POLICIES)}")
        from functions.stack import model_path

        self.path = model_path(models_dir, manifest)
        self.manifest = read_manifest(self.path)
        self.files = [model_path(models_dir, s["file"]) for s in self.manifest["stages"]]
        self.policy, self.threads, self.keep = policy, num_threads, keep
        self.sizes = stage_bytes(self.manifest)
        self.input = _spec(self.manifest["stages"][0], "input")
        self.output = _spec(self.manifest["stages"][-1], "output")
        self.open: dict[int, LoadedModel] = {}  # stages held between calls (bulk, kept ones)
        if policy == "bulk":
            for i in range(len(self.files)):
                self.open[i] = self._load(i)

    def _load(self, i: int) -> LoadedModel:
        return self.open.get(i) or load_model(self.files[i], num_threads=self.threads)

    def _done(self, i: int, stage: LoadedModel) -> None:
        """After stage i ran: keep it (bulk, or one of the first ``keep``) or drop it."""
        if self.policy == "bulk" or i < self.keep:
            self.open[i] = stage
        elif i not in self.open:
            stage.close()
            release_memory()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        value = batch
        for i, stage in self._stages():
            value = stage.predict(value)
            self._done(i, stage)
            if self.policy == "interleaved" and i not in self.open:  # dropped: memory free
                self._gate.release(self.sizes[i])
        return value

    def _stages(self) -> Iterator[tuple[int, LoadedModel]]:
        if self.policy != "interleaved":
            for i in range(len(self.files)):
                yield i, self._load(i)
            return
        yield from self._interleaved()

    def _interleaved(self) -> Iterator[tuple[int, LoadedModel]]:
        """Stages opened ahead by a loader thread, within the two largest stages' bytes
        (plus the kept ones', which stay held once opened)."""
        self._gate = ByteGate(reservation(self.manifest, "interleaved", self.keep))
        self._gate.held = sum(self.sizes[i] for i in self.open)
        ready: queue.Queue = queue.Queue()

        def loader() -> None:
            for i in range(len(self.files)):
                if i in self.open:  # a kept stage: open already, its bytes held already
                    ready.put((i, self.open[i]))
                    continue
                self._gate.acquire(self.sizes[i])
                try:
                    ready.put((i, self._load(i)))
                except Exception as exc:  # noqa: BLE001 (handed to the caller's thread)
                    ready.put((i, exc))
                    return

        thread = threading.Thread(target=loader, name="stage-loader", daemon=True)
        thread.start()
        try:
            for _ in range(len(self.files)):
                i, stage = ready.get()
                if isinstance(stage, Exception):
                    raise stage
                yield i, stage
        finally:  # a stage that raised: let the loader finish instead of waiting for memory
            self._gate.open_wide()
            thread.join()

    def close(self) -> None:
        for stage in self.open.values():
            stage.close()
        self.open.clear()


def open_staged(
    models_dir: str | os.PathLike, model: str, file: str, num_threads: int = 1
) -> StagedModel | None:
    """The staged copy ``model`` names (``MODEL@stages-POLICY``) of ``file``, opened; None
    when ``model`` is a whole model's name."""
    parsed = parse_staged(model)
    if parsed is None:
        return None
    return StagedModel(models_dir, manifest_file(file), parsed[1], num_threads)


def _largest_cap(conn) -> int | None:
    """The largest memory cap among the devices of live workers (None: no worker yet)."""
    from agent.membership import Membership, PlacementError

    membership = Membership(conn)
    try:
        devices = {w.device for w in membership.workers()[0].values()}
        caps = [membership.cap(d) for d in devices]
    except PlacementError:
        return None
    return max(caps, default=None)


def staged_facts(conn, doc: dict[str, Any], models_dir: Path, facts):
    """The facts placement accounts ``doc``'s request with: ``facts`` (the whole model's)
    unless the function is served staged — its stack entry names a policy (``stages``), or
    its whole model is larger than every device's cap and stage files exist (then streamed,
    :data:`STREAMING`). A staged copy is named ``MODEL@stages-POLICY`` and reserves the
    policy's peak bytes (:func:`reservation`), each stage at the whole model's accounted
    bytes per file byte (its profile's when it has one, else twice the file)."""
    policy = doc.get("stages")
    path = models_dir / manifest_file(doc["file"])
    if policy is None:
        if not path.is_file():
            return facts
        cap = _largest_cap(conn)
        if cap is None or facts.bytes <= cap:
            return facts
        policy = STREAMING
    manifest = read_manifest(path)
    ratio = facts.bytes / int(manifest["whole_bytes"])  # measured when the model is profiled
    size = reservation(manifest, policy, per_file_byte=ratio)
    return replace(facts, name=staged_name(facts.name, policy), bytes=size)
