"""The whole flow on real data: MobileNetV2 a0.35 ImageNet weights on the flowers photos.

Skipped (with the reason) when ../shared/data is absent; CI has it.
"""

from __future__ import annotations

import keras
import numpy as np

import finetunekit as ftk

SIZE = (96, 96)
RUN = dict(head_epochs=6, finetune_epochs=2, unfreeze=2, verbose=0)


def load(folder, shuffle):
    return keras.utils.image_dataset_from_directory(
        folder, image_size=SIZE, batch_size=32, seed=0, shuffle=shuffle, verbose=False
    )


def accuracy(model, test) -> float:
    labels = np.concatenate([y for _, y in test.as_numpy_iterator()])
    predictions = model.predict(test, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=1) == labels))


_RUNS: dict[str, tuple] = {}


def runs(weights_035, flowers) -> dict[str, tuple]:
    """Test accuracy after the same FineTuner run from ImageNet and from random weights
    (computed once for both tests)."""
    if _RUNS:
        return _RUNS
    train, test = load(flowers / "train", True), load(flowers / "test", False)
    assert train.class_names == test.class_names
    for name, weights in (("imagenet", weights_035), ("random", None)):
        keras.utils.set_random_seed(0)
        tuner = ftk.FineTuner(
            "mobilenet_v2", weights=weights, alpha=0.35, input_shape=(*SIZE, 3), seed=0
        )
        history = tuner.fit(train, **RUN)
        _RUNS[name] = (tuner, history, accuracy(tuner.model, test))
    return _RUNS


def test_pretrained_weights_reach_well_above_chance(weights_035, flowers):
    tuner, history, acc = runs(weights_035, flowers)["imagenet"]
    assert tuner.num_classes == 5  # from the folder names
    assert "finetune" in history.phases
    assert acc > 0.6, f"test accuracy {acc:.3f} (chance 0.2)"


def test_random_weights_do_clearly_worse(weights_035, flowers):
    pretrained = runs(weights_035, flowers)["imagenet"][2]
    random = runs(weights_035, flowers)["random"][2]
    assert random <= pretrained - 0.2, f"random {random:.3f} vs ImageNet {pretrained:.3f}"
