"""Exception types raised by finetunekit.

Every exception derives from `FinetuneKitError` and from the builtin a
Python user would catch anyway (`ValueError`, `TypeError`, `FileNotFoundError`,
...), so both `except finetunekit.FinetuneKitError` and `except ValueError`
work. Messages say what was expected, what was received and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "FinetuneKitError",
    "UnknownBaseError",
    "InputShapeError",
    "WeightsNotFoundError",
    "WeightsUnavailableError",
    "WeightsMismatchError",
    "ModelStructureError",
    "ConfigError",
    "ArgumentTypeError",
    "DataError",
    "DataNotFoundError",
    "OutputPathError",
    "StepOrderError",
    "MissingExtraError",
    "CheckpointError",
    "TrainingDivergedError",
]


class FinetuneKitError(Exception):
    """Base class of every exception finetunekit raises."""


class ConfigError(FinetuneKitError, ValueError):
    """An argument has a value finetunekit cannot use (bad task, `n`, learning rate...)."""


class ArgumentTypeError(FinetuneKitError, TypeError):
    """An argument has the wrong type (e.g. a list where a Keras model was expected)."""


class UnknownBaseError(ConfigError):
    """A base name is not in the registry; the message suggests the closest names."""


class InputShapeError(ConfigError):
    """`input_shape` is malformed, has the wrong channels, or is too small for the family."""


class WeightsNotFoundError(FinetuneKitError, FileNotFoundError):
    """A weights file or saved model path does not exist."""


class WeightsUnavailableError(FinetuneKitError, OSError):
    """Keras could not download the ImageNet weights (offline, proxy, firewall)."""


class WeightsMismatchError(ConfigError):
    """A weights file does not fit the architecture it is loaded into."""


class ModelStructureError(ConfigError):
    """A model's graph is not one finetunekit can work on (not Functional, no base, ...)."""


class DataError(ConfigError):
    """Training or validation data is malformed (shapes, labels, element structure)."""


class DataNotFoundError(FinetuneKitError, FileNotFoundError):
    """A data path (an image folder) does not exist."""


class OutputPathError(FinetuneKitError, OSError):
    """A file or folder cannot be written where asked (no permission, a folder in the way)."""


class CheckpointError(ConfigError):
    """A `checkpoint_dir` holds another run, cannot be read, or holds none to resume."""


class StepOrderError(FinetuneKitError, RuntimeError):
    """A step was called before the step it depends on (e.g. `train` before `add_head`)."""


class TrainingDivergedError(FinetuneKitError, ArithmeticError):
    """The loss became NaN or infinite during training (learning rate, float16)."""


class MissingExtraError(FinetuneKitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_extra(what: str, package: str, extra: str) -> MissingExtraError:
    """The error for `what` needing `package`, installed by `pip install 'finetunekit[extra]'`."""
    return MissingExtraError(
        f"{what} needs {package}, which is not installed. Install it with "
        f"pip install 'finetunekit[{extra}]' (or pip install {package})."
    )
