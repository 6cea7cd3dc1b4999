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

or chained: ``ftk.FineTuner("mobilenet_v2", num_classes=5).fit(train)``.
"""

from finetunekit import data, datasets
from finetunekit._version import __version__
from finetunekit.bases import list_bases, load_base
from finetunekit.errors import FinetuneKitError
from finetunekit.finetuner import FineTuner
from finetunekit.freezing import freeze, unfreeze_last
from finetunekit.heads import add_head
from finetunekit.selection import Ranking, rank_bases
from finetunekit.tasks import compile_for

__all__ = [
    "__version__",
    "FineTuner",
    "FinetuneKitError",
    "add_head",
    "compile_for",
    "data",
    "datasets",
    "freeze",
    "list_bases",
    "load_base",
    "rank_bases",
    "Ranking",
    "unfreeze_last",
]
