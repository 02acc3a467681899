"""Function handlers: the pre- and post-processing around a model's interpreter.

The gateway calls ``decode`` on the request body (it validates and returns a batch that
matches the model input exactly, batch dimension and dtype included); the worker runs the
interpreter and calls ``encode`` on the output (a JSON-serialisable dict).

Handlers:
- ``image``: ``image/jpeg`` or ``image/png`` in; decoded with Pillow, converted to RGB (or L
  for one-channel models), resized to the model's HxW and normalised per the record's
  ``preprocess`` mode as Keras does; top-k classes out.
- ``tensor``: ``application/json`` ``{"inputs": nested list}`` or an ``application/x-npy`` body
  in; ``{"outputs": nested list}`` out.
- ``digits``: the tensor handler for the sklearn-digits model (8x8x1 grey levels scaled to
  0..1, as ``models.digits`` prepares them) that also answers the predicted class. Digits are
  a tensor function rather than an image one: the model was trained on 0..16 ink levels, not
  on photographs, so clients send the array.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from functions.errors import BadInput
from functions.tensors import from_npy, json_type, parse_json

__all__ = [
    "BadInput",
    "Handler",
    "HANDLERS",
    "handler_for",
    "make_handler",
    "normalise",
    "MAX_BODY_BYTES",
]

MAX_BODY_BYTES = 8 << 20  # request bodies above this answer 413
MAX_IMAGE_PIXELS = 40_000_000  # decoded images above this answer 413 (decompression bombs)

# Keras ``imagenet_utils.preprocess_input`` modes, applied to 0..255 RGB pixels.
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
PREPROCESS_MODES = ("tf", "torch", "caffe", "raw", "digits")


def _media_type(content_type: str) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def conform(array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Fit ``array`` to a model input: add a missing batch dimension, check the shape, and cast
    only where no information is lost in kind (ints/bools to float, floats to a narrower float,
    ints to ints whose range holds every value); anything else is BadInput naming the problem."""
    if array.dtype.kind not in "biuf":
        raise BadInput(f"inputs must be numbers; got dtype {array.dtype}")
    if array.ndim == len(shape) - 1:
        array = array[None, ...]
    if tuple(array.shape) != tuple(shape):
        raise BadInput(
            f"wrong shape: the model takes {list(shape)} (batch dimension optional), "
            f"got {list(array.shape)}"
        )
    if array.dtype == dtype:
        return array
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            cast = array.astype(dtype)
        overflowed = np.isinf(cast)
        if overflowed.any() and (overflowed & ~np.isinf(array)).any():
            raise BadInput(
                f"wrong dtype: values outside {dtype} range (largest {np.finfo(dtype).max:g})"
            )
        return cast
    if dtype.kind in "iu" and array.dtype.kind in "biu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise BadInput(f"wrong dtype: values outside {dtype} range [{info.min}, {info.max}]")
        return array.astype(dtype)
    raise BadInput(f"wrong dtype: the model takes {dtype}, got {array.dtype} (no lossy casts)")


def positive_int(handler: str, option: str, value: Any) -> int:
    """An option that must be a whole number >= 1 (not a bool, string or float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"handler {handler!r}: {option} must be an integer >= 1, got {value!r:.60}"
        )
    return value


def json_inputs(doc: Any) -> np.ndarray:
    """The array of a JSON body ``{"inputs": <nested list of numbers>}``; BadInput naming what
    is of the wrong type (the body, ``inputs``, or the list's items)."""
    if not isinstance(doc, dict):
        raise BadInput(f'JSON body must be an object {{"inputs": [...]}}, got {json_type(doc)}')
    if "inputs" not in doc:
        raise BadInput('JSON body must be an object with an "inputs" field: {"inputs": [...]}')
    inputs = doc["inputs"]
    if isinstance(inputs, (dict, str, bool)) or inputs is None:
        raise BadInput(f"'inputs' must be a nested list of numbers, got {json_type(inputs)}")
    try:
        array = np.asarray(inputs)
    except ValueError as exc:  # ragged nesting, or deeper than numpy's dimension limit
        raise BadInput(f"'inputs' is not a rectangular nested list of numbers ({exc})") from exc
    if array.dtype.kind not in "iuf":
        found = {"b": "booleans", "U": "strings"}.get(
            array.dtype.kind, "null, objects, or integers beyond 64 bits"
        )
        raise BadInput(f"inputs must be numbers; found {found} in 'inputs'")
    return array


class Handler:
    """Common part: the model input it feeds, the body size limit and the option check."""

    name = "base"
    content_types: tuple[str, ...] = ()
    option_names: tuple[str, ...] = ("max_bytes",)

    def __init__(self, record: dict[str, Any], **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ValueError(
                f"handler {self.name!r}: unknown option(s) {unknown}; "
                f"known: {sorted(self.option_names)}"
            )
        try:
            self.input_shape = tuple(int(d) for d in record["input_shape"])
            self.input_dtype = np.dtype(record["input_dtype"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"handler {self.name!r}: model record has no usable input_shape/input_dtype"
            ) from exc
        self.record = record
        self.options = options
        limit = options.get("max_bytes", MAX_BODY_BYTES)
        self.max_bytes = positive_int(self.name, "max_bytes", limit)

    def decode(self, body: bytes, content_type: str) -> np.ndarray:
        """Validate ``body`` and return the model's input batch (BadInput otherwise)."""
        if len(body) > self.max_bytes:
            raise BadInput(
                f"body of {len(body)} bytes is over the {self.max_bytes}-byte limit", 413
            )
        media = _media_type(content_type)
        if media not in self.content_types:
            raise BadInput(
                f"wrong content type {media or '(none)'!r}: function takes "
                f"{', '.join(self.content_types)}"
            )
        if not body:
            raise BadInput("empty body")
        return self._decode(body, media)

    def _decode(self, body: bytes, media: str) -> np.ndarray:
        raise NotImplementedError

    def encode(self, output: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError


class TensorHandler(Handler):
    name = "tensor"
    content_types = ("application/json", "application/x-npy")

    def _decode(self, body: bytes, media: str) -> np.ndarray:
        if media == "application/x-npy":
            array = from_npy(body)
        else:
            array = json_inputs(parse_json(body))
        return conform(array, self.input_shape, self.input_dtype)

    def encode(self, output: np.ndarray) -> dict[str, Any]:
        return {"outputs": np.asarray(output).tolist()}


class DigitsHandler(TensorHandler):
    """Tensor in; probabilities plus the predicted class (``argmax``) per sample out."""

    name = "digits"

    def encode(self, output: np.ndarray) -> dict[str, Any]:
        output = np.asarray(output)
        return {"outputs": output.tolist(), "classes": output.argmax(axis=-1).tolist()}


class ImageHandler(Handler):
    """JPEG/PNG in, top-k classes out. Options: ``top_k`` (default 5), ``labels`` (list)."""

    name = "image"
    content_types = ("image/jpeg", "image/png")
    option_names = ("max_bytes", "top_k", "labels")

    def __init__(self, record: dict[str, Any], **options: Any) -> None:
        super().__init__(record, **options)
        if len(self.input_shape) != 4 or self.input_shape[-1] not in (1, 3):
            raise ValueError(
                f"handler 'image' needs an NHWC input with 1 or 3 channels; "
                f"model takes {list(self.input_shape)}"
            )
        self.preprocess = record.get("preprocess") or "raw"
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(
                f"handler 'image': unknown preprocess {self.preprocess!r}; "
                f"known: {list(PREPROCESS_MODES)}"
            )
        self.top_k = positive_int(self.name, "top_k", options.get("top_k", 5))
        self.labels = options.get("labels")
        if self.labels is not None and not (
            isinstance(self.labels, list) and all(isinstance(x, str) for x in self.labels)
        ):
            raise ValueError(
                f"handler 'image': labels must be a list of strings, got {self.labels!r:.60}"
            )

    def _decode(self, body: bytes, media: str) -> np.ndarray:
        from PIL import Image

        _, height, width, channels = self.input_shape
        try:
            with Image.open(io.BytesIO(body)) as img:
                if img.format not in ("JPEG", "PNG"):
                    raise BadInput(f"image format {img.format} is not JPEG or PNG")
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise BadInput(
                        f"image of {img.width}x{img.height} pixels is over the "
                        f"{MAX_IMAGE_PIXELS}-pixel limit",
                        413,
                    )
                img = img.convert("RGB" if channels == 3 else "L")
                img = img.resize((width, height), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
        except BadInput:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise BadInput(f"corrupt or unreadable image ({exc})") from exc
        pixels = pixels.reshape(height, width, channels)
        return self._normalise(pixels)[None, ...]

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype.kind in "iu":  # integer input: the model takes raw pixels
            return np.clip(x, 0, 255).astype(self.input_dtype)
        return normalise(x, self.preprocess).astype(self.input_dtype)

    def encode(self, output: np.ndarray) -> dict[str, Any]:
        scores = np.asarray(output, dtype=np.float64).reshape(-1)
        k = min(self.top_k, scores.size)
        top = np.argsort(-scores, kind="stable")[:k]
        outputs = []
        for i in top:
            item: dict[str, Any] = {"class": int(i), "score": float(scores[i])}
            if self.labels and int(i) < len(self.labels):
                item["label"] = self.labels[int(i)]
            outputs.append(item)
        return {"outputs": outputs}


def normalise(x: np.ndarray, preprocess: str) -> np.ndarray:
    """0..255 pixels to model input, as Keras ``preprocess_input`` does for each mode."""
    if preprocess == "tf":
        x = x / 127.5 - 1.0
    elif preprocess == "torch":
        x = (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    elif preprocess == "caffe":
        x = x[..., ::-1] - _CAFFE_MEAN_BGR
    elif preprocess == "digits":
        x = x / 255.0  # bright ink on dark ground, 0..1 like models.digits
    return x.astype(np.float32)


HANDLERS: dict[str, type[Handler]] = {
    h.name: h for h in (ImageHandler, TensorHandler, DigitsHandler)
}


def handler_for(record: dict[str, Any]) -> str:
    """Choose a handler from a model's input signature and catalog facts.

    NHWC inputs with 3 channels and a known ``preprocess`` mode are images; the digits task is
    ``digits``; everything else (including models found without a catalog entry, whose
    normalisation is unknown) is ``tensor``.
    """
    shape = list(record.get("input_shape") or [])
    if record.get("task") == "digits" or record.get("preprocess") == "digits":
        return "digits"
    if (
        len(shape) == 4
        and shape[-1] == 3
        and record.get("preprocess") in ("tf", "torch", "caffe", "raw")
    ):
        return "image"
    return "tensor"


def make_handler(name: str, record: dict[str, Any], **options: Any) -> Handler:
    """Build handler ``name`` for a model record; ValueError naming unknown handlers/options."""
    try:
        cls = HANDLERS[name]
    except KeyError:
        raise ValueError(f"unknown handler {name!r}; known: {sorted(HANDLERS)}") from None
    return cls(record, **options)
