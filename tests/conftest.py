"""Shared fixtures: tiny bases and the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS_DIR = SHARED_DATA / "weights"
MOBILENET_V2_035 = (
    WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
)
FLOWERS = SHARED_DATA / "flowers"


@pytest.fixture
def weights_035() -> Path:
    if not MOBILENET_V2_035.exists():
        pytest.skip(
            f"real ImageNet weights not found at {MOBILENET_V2_035} (../shared/data absent)"
        )
    return MOBILENET_V2_035


@pytest.fixture
def flowers() -> Path:
    if not (FLOWERS / "train").is_dir():
        pytest.skip(f"flowers dataset not found at {FLOWERS} (../shared/data absent)")
    return FLOWERS


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def tiny_images():
    """Random raw-pixel images (0-255) and 3-class integer labels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=(24,))
    return x, y


@pytest.fixture
def untuned_reads(monkeypatch):
    """Every dataset finetunekit passes through `caching.untuned`, as that returned it."""
    from finetunekit import caching, evaluation

    read: list = []
    untuned = caching.untuned

    def spy(dataset):
        read.append(untuned(dataset))
        return read[-1]

    monkeypatch.setattr(caching, "untuned", spy)
    monkeypatch.setattr(evaluation, "untuned", spy)  # imported there by name
    return read
