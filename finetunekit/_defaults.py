"""The defaults of `FineTuner.fit`, in a module light enough for the command line to import."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULTS", "Defaults"]


@dataclass(frozen=True)
class Defaults:
    """The defaults of `FineTuner.fit` (and `plan`), chosen by measurement.

    Measured with `benchmarks/bench_flowers.py` and sweeps over these knobs on the flowers
    photos (350 training images, MobileNetV2 alpha 0.35, 224 px, seeds 0-9; see the docs'
    benchmarks page). With the frozen layers cached, head epochs cost almost nothing, so
    the head trains until early stopping (on a held-out 20% of the training images) ends
    it. A head on unit-length features (`normalize`) at 1.5e-2 beat the plain head at
    3e-3 on every seed but two ties (mean test accuracy 0.806 against 0.795); it needs
    more epochs to converge, hence the cap of 100 and a patience of 10. A fine-tune rate
    of 1e-5 on the last 2 blocks kept what the head reached, while 1e-4 and 4+ blocks
    overfit the 350 images. Dropout 0.5 gave the best mean test accuracy.
    """

    head_epochs: int = 100
    finetune_epochs: int = 10
    unfreeze: int = 2
    head_learning_rate: float = 1.5e-2
    finetune_learning_rate: float = 1e-5
    dropout: float = 0.5
    normalize: bool = True
    patience: int = 10
    validation_split: float = 0.2


DEFAULTS = Defaults()
