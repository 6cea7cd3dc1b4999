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
    from finetunekit.finetuner import FineTuner
    from finetunekit.freezing import freeze, unfreeze_last
    from finetunekit.heads import add_head
    from finetunekit.recipe import DEFAULTS, Phase, Plan, Recipe
    from finetunekit.tasks import compile_for
    from finetunekit.training import FineTuneHistory, PhaseReport

# Public name -> the module that defines it (a module name for a submodule). Importing
# them waits for first use (PEP 562), so `import finetunekit` and the command's --help
# do not pay TensorFlow's start-up time.
_LAZY = {
    "DEFAULTS": "finetunekit.recipe",
    "FineTuneHistory": "finetunekit.training",
    "FineTuner": "finetunekit.finetuner",
    "Phase": "finetunekit.recipe",
    "PhaseReport": "finetunekit.training",
    "Plan": "finetunekit.recipe",
    "Recipe": "finetunekit.recipe",
    "add_head": "finetunekit.heads",
    "compile_for": "finetunekit.tasks",
    "data": "finetunekit.data",
    "datasets": "finetunekit.datasets",
    "freeze": "finetunekit.freezing",
    "input_size": "finetunekit.bases",
    "list_bases": "finetunekit.bases",
    "load_base": "finetunekit.bases",
    "unfreeze_last": "finetunekit.freezing",
}

__all__ = [
    "__version__",
    "FinetuneKitError",
    "DEFAULTS",
    "FineTuneHistory",
    "FineTuner",
    "Phase",
    "PhaseReport",
    "Plan",
    "Recipe",
    "add_head",
    "compile_for",
    "data",
    "datasets",
    "freeze",
    "input_size",
    "list_bases",
    "load_base",
    "unfreeze_last",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'finetunekit' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"finetunekit.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
