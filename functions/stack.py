"""Which functions an agent serves: ``functions/stack.yml`` (OpenFaaS stack-file spirit) or,
with no file, every model in the model directory under its own name (zero configuration).

Model files are always resolved through ``model_path`` so neither a stack file nor the
management API can point the agent at a file outside its model directory.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.sizes import SIZE_PATTERN, parse_size
from functions.handlers import HANDLERS, handler_for, make_handler
from functions.tensors import json_type

log = logging.getLogger(__name__)

FUNCTION_KEYS = {
    "model",
    "handler",
    "memory",
    "options",
    "file",
    "max_attempts",
    "variants",
    "min_accuracy",
    "stages",
}
API_REQUIRED = ["name", "model"]  # what POST /system/functions needs (and the schema says)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 128
MEMORY_PATTERN = SIZE_PATTERN  # the API schema's pattern for a memory hint
TOP_KEYS = {"version", "provider", "functions"}


@dataclass
class Function:
    """One deployed function: a name bound to a model file, a handler and its options."""

    name: str
    model: str
    file: str
    handler: str
    memory: int | None = None  # hint in bytes; used before the model has been profiled
    options: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None  # async attempts if a worker dies running one
    stages: str | None = None  # serve from the model's stage files under this loading policy
    variants: list[dict[str, Any]] = field(default_factory=list)  # agent.variants.declared
    min_accuracy: float | None = None

    def describe(self) -> dict[str, Any]:
        """What ``GET /system/functions`` lists (the gateway adds state and loaded bytes)."""
        cls = HANDLERS.get(self.handler)
        return {
            "name": self.name,
            "model": self.model,
            "handler": self.handler,
            "input_shape": self.record.get("input_shape"),
            "input_dtype": self.record.get("input_dtype"),
            "content_types": list(cls.content_types) if cls else [],
            "memory": self.memory,
        }


def model_path(models_dir: str | os.PathLike, file: str | os.PathLike) -> Path:
    """``models_dir/file`` resolved; ValueError if it is absolute, uses ``..`` or a symlink that
    leads outside the model directory."""
    text = os.fspath(file)
    if not text:
        raise ValueError("model file name is empty")
    rel = Path(text)
    if rel.is_absolute():
        raise ValueError(f"model file {text!r} is an absolute path; name a file in the model dir")
    if ".." in rel.parts:
        raise ValueError(f"model file {text!r} uses '..'; it must stay inside the model directory")
    base = Path(models_dir).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"model file {text!r} resolves to {target}, outside the model dir {base}")
    return target


def parse_memory(value: Any) -> int | None:
    """Bytes from an int or a size (agent.sizes: ``64Mi``/``100MB``/``1.5G``); None stays None."""
    return None if value is None else parse_size(value, what="memory")


def deploy_request(body: Any) -> tuple[str, dict[str, Any]]:
    """The function name and spec of a ``POST /system/functions`` body: a JSON object with the
    required ``name`` and ``model`` (a stack file may omit ``model``; the API may not) and the
    optional keys of ``FUNCTION_KEYS``; ValueError naming the missing or ill-typed field."""
    if not isinstance(body, dict):
        raise ValueError(f"body must be a JSON object, got {json_type(body)}")
    for required in API_REQUIRED:
        if required not in body:
            raise ValueError(f"missing required field {required!r} (required: {API_REQUIRED})")
    return body["name"], {k: v for k, v in body.items() if k != "name"}


def _check_types(spec: dict[str, Any]) -> None:
    """ValueError naming a key whose value has the wrong JSON/YAML type (``options`` and
    ``memory`` may be null: a stack file's empty ``options:``)."""
    for key in ("model", "file", "handler"):
        if key in spec and not isinstance(spec[key], str):
            raise ValueError(f"{key} must be a string, got {json_type(spec[key])}")
    if "options" in spec and spec["options"] is not None and not isinstance(spec["options"], dict):
        raise ValueError(f"options must be a mapping, got {json_type(spec['options'])}")


def _signature(record: dict[str, Any]) -> tuple:
    return tuple(
        (list(record.get(f"{side}_shape") or []), str(record.get(f"{side}_dtype")))
        for side in ("input", "output")
    )


def _check_file_fits(
    model: str, record: dict[str, Any], path: Path, models_dir: str | os.PathLike, catalog: dict
) -> None:
    """A function may serve ``model`` from another file only when the catalog knows that file
    and it has the model's input and output signature: the gateway checks requests against the
    model's record, so a worker running another shape would fail every call."""
    holder = next(
        (
            r
            for r in catalog.values()
            if r.get("file") and model_path(models_dir, r["file"]) == path
        ),
        None,
    )
    if holder is None:
        raise ValueError(
            f"model file {path.name!r} is not in the catalog, so its signature cannot be "
            f"checked against model {model!r}'s; deploy the model it holds instead"
        )
    if _signature(holder) != _signature(record):
        (want, want_dtype), _ = _signature(record)
        (got, got_dtype), _ = _signature(holder)
        raise ValueError(
            f"model file {path.name!r} holds {holder.get('name')!r} (input {got} {got_dtype}), "
            f"which does not fit model {model!r} (input {want} {want_dtype})"
        )


def build_function(
    name: str, spec: dict[str, Any], models_dir: str | os.PathLike, catalog: dict[str, dict]
) -> Function:
    """One function from its stack entry (or a management-API body); ValueError on bad keys."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
        raise ValueError(
            f"function name {name!r:.80} must be 1-{NAME_MAX} letters, digits, . _ - "
            "(starting with a letter or digit)"
        )
    unknown = sorted(set(spec) - FUNCTION_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(FUNCTION_KEYS)}")
    _check_types(spec)
    model = spec.get("model", name)
    if model not in catalog:
        raise ValueError(f"model {model!r:.80} is not in the catalog ({sorted(catalog)})")
    record = catalog[model]
    file = spec.get("file", record["file"])
    path = model_path(models_dir, file)
    if path != model_path(models_dir, record["file"]) and path.is_file():
        _check_file_fits(model, record, path, models_dir, catalog)
    handler = spec["handler"] if "handler" in spec else handler_for(record)
    options = spec.get("options") or {}
    make_handler(handler, record, **options)  # unknown handler, options or signature fail here
    memory = parse_memory(spec.get("memory"))
    from agent.jobs import parse_max_attempts

    attempts = parse_max_attempts(spec.get("max_attempts"), "max_attempts")
    stages = _check_stages(spec.get("stages"), models_dir, str(file))
    variants, floor = _variants(spec, model, record, models_dir, catalog)
    return Function(
        name,
        model,
        str(file),
        handler,
        memory,
        options,
        record,
        attempts,
        stages,
        variants=variants,
        min_accuracy=floor,
    )


def _variants(
    spec: dict[str, Any], model: str, record: dict, models_dir: str | os.PathLike, catalog: dict
) -> tuple[list[dict[str, Any]], float | None]:
    """The entry's variants (agent.variants.declared), each with the model's signature: the
    gateway decodes a request once, for whichever variant serves it."""
    from agent.variants import declared
    from models.profile import read_profiles

    profiles_path = Path(models_dir) / "profiles.json"
    profiles = read_profiles(profiles_path) if profiles_path.is_file() else {}
    variants, floor = declared(spec, model, catalog, profiles)
    for v in variants:
        if _signature(catalog[v["model"]]) != _signature(record):
            raise ValueError(
                f"variant {v['model']!r} has another input/output signature than {model!r} "
                f"({_signature(catalog[v['model']])} vs {_signature(record)})"
            )
    return variants, floor


def _check_stages(policy: Any, models_dir: str | os.PathLike, file: str) -> str | None:
    """A function's ``stages`` (a loading policy of :mod:`agent.staged`), checked: the stage
    files must have been built (``brulee models build --stages K``)."""
    from agent.staged import POLICIES, manifest_file

    if policy is None:
        return None
    if policy not in POLICIES:
        raise ValueError(f"stages {policy!r:.40} is not a loading policy; valid: {POLICIES}")
    if not model_path(models_dir, manifest_file(file)).is_file():
        raise ValueError(
            f"stages: {policy} needs {manifest_file(file)}; build it with "
            "`brulee models build --stages K`"
        )
    return policy


def load_stack(
    path: str | os.PathLike, models_dir: str | os.PathLike, catalog: dict[str, dict]
) -> dict[str, Function]:
    """Functions of a stack file; ValueError naming the file, function and key at fault."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read stack file ({exc.strerror})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("functions"), dict):
        raise ValueError(f"{path}: must be a mapping with a 'functions:' mapping of name -> spec")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    functions: dict[str, Function] = {}
    for name, spec in doc["functions"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: function {name!r} must be a mapping (model:, handler:, ...)")
        try:
            functions[name] = build_function(name, spec, models_dir, catalog)
        except ValueError as exc:
            raise ValueError(f"{path}: function {name!r}: {exc}") from exc
    return functions


def signature_record(models_dir: str | os.PathLike, file: str) -> dict[str, Any]:
    """A minimal record for a ``.tflite`` without a catalog entry, read from its interpreter."""
    from agent.runtime import load_model

    loaded = load_model(model_path(models_dir, file))
    try:
        return {
            "name": Path(file).stem,
            "file": file,
            "input_shape": list(loaded.input.shape),
            "input_dtype": str(loaded.input.dtype),
            "output_shape": list(loaded.output.shape),
            "output_dtype": str(loaded.output.dtype),
        }
    finally:
        loaded.close()


def zero_config(models_dir: str | os.PathLike) -> dict[str, Function]:
    """Every model in ``models_dir`` under its own name: catalog records first, then ``.tflite``
    files the catalog does not list (signature read by the interpreter; unreadable ones are
    skipped with a warning, since there is no shape to serve them with)."""
    from models.catalog import load_catalog

    catalog = load_catalog(models_dir)
    functions = {
        name: Function(name, name, rec["file"], handler_for(rec), None, {}, rec)
        for name, rec in catalog.items()
    }
    listed = {rec["file"] for rec in catalog.values()}
    for path in sorted(Path(models_dir).glob("*.tflite")):
        if path.name in listed or path.stem in functions:
            continue
        try:
            rec = signature_record(models_dir, path.name)
        except (ValueError, RuntimeError) as exc:
            log.warning("skipping %s: cannot read its signature (%s)", path.name, exc)
            continue
        handler = handler_for(rec)
        functions[path.stem] = Function(path.stem, path.stem, path.name, handler, None, {}, rec)
    return functions
