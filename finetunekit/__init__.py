"""finetunekit: fine-tuning building blocks for TensorFlow/Keras.

The six steps, each usable alone on plain Keras models::

    import finetunekit as ftk

    base = ftk.load_base("mobilenet_v2", input_shape=(160, 160, 3))
    ftk.freeze(base)
    model = ftk.add_head(base, num_classes=5)
    ftk.compile_for(model, task="multiclass", learning_rate=1e-3)
    model.fit(train, validation_data=val, epochs=5)
    ftk.unfreeze_last(model, 2, unit="block")
    ftk.compile_for(model, task="multiclass", learning_rate=1e-5)
    model.fit(train, validation_data=val, epochs=5)

or chained: ``ftk.FineTuner("mobilenet_v2", num_classes=5).fit(train)``, which runs
the phases of a ``Recipe`` (``DEFAULTS`` unless told otherwise).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from finetunekit._version import __version__
from finetunekit.errors import FinetuneKitError

if TYPE_CHECKING:
    from finetunekit import data, datasets
    from finetunekit.bases import input_size, list_bases, load_base
    from finetunekit.classifier import Classifier, Prediction, Predictions, load, save_model
    from finetunekit.evaluation import Report, evaluate, plot_history
    from finetunekit.exporting import ExportReport, export
    from finetunekit.finetuner import FineTuner
    from finetunekit.freezing import freeze, unfreeze_last
    from finetunekit.heads import add_head
    from finetunekit.lr_finder import LRFinderResult, find_lr
    from finetunekit.recipe import DEFAULTS, Phase, Plan, Recipe
    from finetunekit.selection import Ranking, rank_bases
    from finetunekit.tasks import compile_for
    from finetunekit.training import FineTuneHistory, PhaseReport

# Public name -> the module that defines it (a module name for a submodule). Importing
# them waits for first use (PEP 562), so `import finetunekit` and the command's --help
# do not pay TensorFlow's start-up time.
_LAZY = {
    "add_head": "finetunekit.heads",
    "Classifier": "finetunekit.classifier",
    "compile_for": "finetunekit.tasks",
    "data": "finetunekit.data",
    "datasets": "finetunekit.datasets",
    "DEFAULTS": "finetunekit.recipe",
    "evaluate": "finetunekit.evaluation",
    "export": "finetunekit.exporting",
    "ExportReport": "finetunekit.exporting",
    "FineTuneHistory": "finetunekit.training",
    "find_lr": "finetunekit.lr_finder",
    "FineTuner": "finetunekit.finetuner",
    "freeze": "finetunekit.freezing",
    "input_size": "finetunekit.bases",
    "list_bases": "finetunekit.bases",
    "load": "finetunekit.classifier",
    "LRFinderResult": "finetunekit.lr_finder",
    "load_base": "finetunekit.bases",
    "Phase": "finetunekit.recipe",
    "PhaseReport": "finetunekit.training",
    "Plan": "finetunekit.recipe",
    "plot_history": "finetunekit.evaluation",
    "Prediction": "finetunekit.classifier",
    "Predictions": "finetunekit.classifier",
    "rank_bases": "finetunekit.selection",
    "Ranking": "finetunekit.selection",
    "Recipe": "finetunekit.recipe",
    "Report": "finetunekit.evaluation",
    "save_model": "finetunekit.classifier",
    "unfreeze_last": "finetunekit.freezing",
}

__all__ = [
    "__version__",
    "FinetuneKitError",
    "add_head",
    "Classifier",
    "compile_for",
    "data",
    "datasets",
    "DEFAULTS",
    "evaluate",
    "export",
    "ExportReport",
    "FineTuneHistory",
    "find_lr",
    "FineTuner",
    "freeze",
    "input_size",
    "list_bases",
    "load",
    "LRFinderResult",
    "load_base",
    "Phase",
    "PhaseReport",
    "Plan",
    "plot_history",
    "Prediction",
    "Predictions",
    "rank_bases",
    "Ranking",
    "Recipe",
    "Report",
    "save_model",
    "unfreeze_last",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'finetunekit' has no attribute {name!r}")
    from finetunekit._checks import check_backend

    check_backend()  # Keras of another backend fails deep in its import otherwise
    module = importlib.import_module(module_name)
    value = module if module_name == f"finetunekit.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
