"""Which architectures brulee can build, and the named sets of them.

An :class:`Architecture` says how to construct one Keras model and how its inputs are
normalised; building and converting it is ``models.build``'s job. The ``full`` set is the 26
Keras applications the seed paper measured (``data/measurements/models.m5.json``); ``edge`` is
the default demo set; ``test`` holds small but real CNNs that build in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """How to build one model.

    ``keras`` names a class in ``tf.keras.applications`` or one of the custom builders in
    ``models.build`` (``tiny_cnn``, ``digits_cnn``). ``preprocess`` tells image handlers how to
    turn 0..255 RGB pixels into model input: ``tf`` scales to [-1, 1], ``torch`` to ImageNet
    mean/std, ``caffe`` to BGR minus the ImageNet mean, ``raw`` leaves 0..255 (the model
    rescales itself), ``digits`` maps to scikit-learn's 16 grey levels scaled to 0..1.
    """

    name: str
    keras: str
    input_size: int
    channels: int = 3
    classes: int = 1000
    kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: str = "tf"
    task: str = "image-classification"
    # Operators XNNPACK cannot take in this architecture, allowed to run outside its delegate
    # (the builder refuses a model with any other operator left outside).
    off_xnnpack: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    @property
    def trained(self) -> bool:
        """True when the builder trains the model itself (so random weights are not the point)."""
        return self.keras == "digits_cnn"


def _app(
    name: str,
    keras: str,
    size: int,
    preprocess: str,
    classes: int = 1000,
    off_xnnpack: tuple[str, ...] = (),
    **kwargs: Any,
) -> Architecture:
    return Architecture(
        name=name,
        keras=keras,
        input_size=size,
        classes=classes,
        preprocess=preprocess,
        kwargs=kwargs,
        off_xnnpack=off_xnnpack,
    )


# ResNet V2 subsamples its shortcuts with a 1x1 max pool of stride 2, a window XNNPACK does
# not take: three MAX_POOL_2D stay on TFLite's kernel, between four XNNPACK partitions.
_V2_POOL = ("MAX_POOL_2D",)


# The 26 Keras applications of the seed's models.m5.json, at their native input sizes.
FULL = [
    _app("densenet121", "DenseNet121", 224, "torch"),
    _app("densenet169", "DenseNet169", 224, "torch"),
    _app("densenet201", "DenseNet201", 224, "torch"),
    _app("efficientnetb0", "EfficientNetB0", 224, "raw"),
    _app("efficientnetb1", "EfficientNetB1", 240, "raw"),
    _app("efficientnetb2", "EfficientNetB2", 260, "raw"),
    _app("efficientnetb3", "EfficientNetB3", 300, "raw"),
    _app("efficientnetb4", "EfficientNetB4", 380, "raw"),
    _app("efficientnetb5", "EfficientNetB5", 456, "raw"),
    _app("efficientnetb6", "EfficientNetB6", 528, "raw"),
    _app("efficientnetb7", "EfficientNetB7", 600, "raw"),
    _app("inceptionresnetv2", "InceptionResNetV2", 299, "tf"),
    _app("inceptionv3", "InceptionV3", 299, "tf"),
    _app("mobilenet", "MobileNet", 224, "tf"),
    _app("mobilenetv2", "MobileNetV2", 224, "tf"),
    _app("nasnetlarge", "NASNetLarge", 331, "tf"),
    _app("nasnetmobile", "NASNetMobile", 224, "tf"),
    _app("resnet101", "ResNet101", 224, "caffe"),
    _app("resnet101v2", "ResNet101V2", 224, "tf", off_xnnpack=_V2_POOL),
    _app("resnet152", "ResNet152", 224, "caffe"),
    _app("resnet152v2", "ResNet152V2", 224, "tf", off_xnnpack=_V2_POOL),
    _app("resnet50", "ResNet50", 224, "caffe"),
    _app("resnet50v2", "ResNet50V2", 224, "tf", off_xnnpack=_V2_POOL),
    _app("vgg16", "VGG16", 224, "caffe"),
    _app("vgg19", "VGG19", 224, "caffe"),
    _app("xception", "Xception", 299, "tf"),
]

_EXTRA = [
    _app("mobilenetv3small", "MobileNetV3Small", 224, "raw"),
    _app("mobilenetv3large", "MobileNetV3Large", 224, "raw"),
]

# Small but real CNNs of clearly different sizes (tens of KB to a few MB), plus the digits
# classifier that is trained at build time so tests can check real predictions.
TEST = [
    Architecture("tiny-cnn", "tiny_cnn", 32, classes=10, preprocess="tf"),
    _app("mobilenet-micro", "MobileNet", 64, "tf", classes=100, alpha=0.25),
    _app("mobilenetv2-mini", "MobileNetV2", 96, "tf", classes=100, alpha=0.35),
    _app("mobilenetv3small-mini", "MobileNetV3Small", 96, "raw", classes=100, minimalistic=True),
    Architecture(
        "digits-cnn", "digits_cnn", 8, channels=1, classes=10, preprocess="digits", task="digits"
    ),
]

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in FULL + _EXTRA + TEST}

# About ten models from the MobileNet, EfficientNet, ResNet and DenseNet families.
EDGE_NAMES = [
    "mobilenet",
    "mobilenetv2",
    "mobilenetv3small",
    "mobilenetv3large",
    "efficientnetb0",
    "efficientnetb1",
    "efficientnetb2",
    "resnet50",
    "resnet50v2",
    "densenet121",
]

SETS: dict[str, list[str]] = {
    "test": [a.name for a in TEST],
    "edge": EDGE_NAMES,
    "full": [a.name for a in FULL],
}


class UnknownName(KeyError):
    """An architecture or set name that the zoo does not have; the message lists valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is meant for people.
        return str(self.args[0])


def resolve(
    set_name: str | None = None, names: list[str] | tuple[str, ...] = ()
) -> list[Architecture]:
    """Architectures for a set and/or explicit names, in order, without duplicates."""
    if set_name is None and not names:
        raise ValueError("give a set or at least one architecture")
    wanted: list[str] = []
    if set_name is not None:
        if set_name not in SETS:
            raise UnknownName(f"unknown set {set_name!r}; valid sets: {', '.join(SETS)}")
        wanted += SETS[set_name]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise UnknownName(
            f"unknown architecture {', '.join(map(repr, unknown))}; "
            f"valid architectures: {', '.join(sorted(ARCHITECTURES))}"
        )
    wanted += list(names)
    return [ARCHITECTURES[n] for n in dict.fromkeys(wanted)]
