"""The data of the quick-start notebook, so its first cells can be about fine-tuning.

`example_data()` finds the flower photos and the MobileNetV2 (alpha 0.35) ImageNet
weights in ../shared/data beside the repository (or $FINETUNEKIT_SHARED_DATA). Without
them it falls back to a synthetic dataset of shapes and random weights: the steps are
the same, the accuracy is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import finetunekit as ftk

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


class ExampleData(NamedTuple):
    train: Any  # batched (raw pixels, labels)
    val: Any
    test: Any
    class_names: tuple[str, ...]
    weights: Path | None  # the ImageNet weights file, or None (random weights)
    description: str


def _shared_data() -> Path | None:
    if "FINETUNEKIT_SHARED_DATA" in os.environ:
        candidates = [Path(os.environ["FINETUNEKIT_SHARED_DATA"])]
    else:  # the notebook runs in notebooks/; also allow a kernel started at the repo root
        candidates = [Path("..") / ".." / "shared" / "data", Path("..") / "shared" / "data"]
    return next(
        (p for p in candidates if (p / "flowers" / "train").is_dir() and (p / "weights").is_dir()),
        None,
    )


def example_data(size: int) -> ExampleData:
    """The flower photos at `size` px with real weights, or shapes with random weights."""
    shared = _shared_data()
    if shared is not None and (shared / "weights" / WEIGHTS_FILE).exists():
        flowers = shared / "flowers"
        train, val, names = ftk.data.from_directory(
            flowers / "train", image_size=size, validation_split=0.2, seed=0
        )
        test = ftk.data.from_directory(flowers / "test", image_size=size, seed=0)
        return ExampleData(
            train,
            val,
            test.train,
            tuple(names),
            shared / "weights" / WEIGHTS_FILE,
            "flower photos, ImageNet MobileNetV2 (alpha 0.35) weights",
        )
    x, y, names = ftk.datasets.shapes(60, image_size=size, classes=("circle", "square", "ring"))
    return ExampleData(
        ftk.data.from_arrays(x[:120], y[:120], batch_size=32, seed=0),
        ftk.data.from_arrays(x[120:150], y[120:150], batch_size=32, shuffle=False),
        ftk.data.from_arrays(x[150:], y[150:], batch_size=32, shuffle=False),
        tuple(names),
        None,
        "synthetic shapes (no ../shared/data here), random weights",
    )
