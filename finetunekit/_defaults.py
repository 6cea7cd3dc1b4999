"""The defaults of `FineTuner.fit`, in a module light enough for the command line to import."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULTS", "Defaults"]


@dataclass(frozen=True)
class Defaults:
    """The defaults of `FineTuner.fit` (and `plan`), chosen by measurement.

    Measured with `benchmarks/bench_flowers.py` and a sweep over these knobs on the flowers
    photos (350 training images, MobileNetV2 alpha 0.35, 224 px, 3 seeds; see the docs'
    benchmarks page): with the frozen layers cached, head epochs cost almost nothing, so
    the head trains until early stopping (on a held-out 20% of the training images) ends
    it; a fine-tune rate of 1e-5 on the last 2 blocks kept what the head reached, while
    1e-4 and 4+ blocks overfit the 350 images; dropout 0.5 and a head rate of 3e-3 gave
    the best mean test accuracy.
    """

    head_epochs: int = 30
    finetune_epochs: int = 10
    unfreeze: int = 2
    head_learning_rate: float = 3e-3
    finetune_learning_rate: float = 1e-5
    dropout: float = 0.5
    patience: int = 5
    validation_split: float = 0.2


DEFAULTS = Defaults()
