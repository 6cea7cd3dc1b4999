"""Argument checks with one phrasing: "`name` must be <expected>; received <value>."

Like scikit-learn's `check_scalar`: one validator per kind of scalar, so every
message says what was expected, what was received and, where it helps, how to
fix it. Light on purpose (no TensorFlow), so the command line can use it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from collections.abc import Collection
from typing import Any

from finetunekit.errors import ConfigError

__all__ = ["check_int", "check_float", "check_choice", "check_bool"]


def _fail(
    name: str, expected: str, value: Any, hint: str, error: type[Exception]
) -> Exception:
    message = f"{name} must be {expected}; received {value!r}."
    return error(f"{message} {hint}".strip())


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    expected: str | None = None,
    hint: str = "",
    error: type[Exception] = ConfigError,
) -> int:
    """`value` as an int within [minimum, maximum]; numpy integers are welcome, bools not."""
    if expected is None:
        expected = "an int" + (f" >= {minimum}" if minimum is not None else "")
        if maximum is not None:
            expected += f" and <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, expected, value, hint, error)
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise _fail(name, expected, value, hint, error)
    return number


def check_float(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    include_low: bool = False,
    expected: str | None = None,
    hint: str = "",
    error: type[Exception] = ConfigError,
) -> float:
    """`value` as a finite float in (low, high) ((low, ...] when `include_low`)."""
    if expected is None:
        bracket = "[" if include_low else "("
        upper = "" if high == math.inf else f", {high:g})"
        expected = (
            f"a number in {bracket}{low:g}{upper}" if upper else f"a number > {low:g}"
        )
        if include_low and not upper:
            expected = f"a number >= {low:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, expected, value, hint, error)
    number = float(value)
    ok = (number >= low if include_low else number > low) and number < high
    if not ok or not math.isfinite(number):
        raise _fail(name, expected, value, hint, error)
    return number


def check_choice(
    name: str,
    value: Any,
    choices: Collection[Any],
    *,
    hint: str = "",
    error: type[Exception] = ConfigError,
) -> Any:
    """`value` if it is one of `choices`."""
    try:
        found = value in choices
    except TypeError:  # unhashable
        found = False
    if not found or isinstance(value, bool) and not any(c is value for c in choices):
        names = [repr(c) for c in choices]
        shown = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise _fail(name, shown if len(names) <= 2 else f"one of {shown}", value, hint, error)
    return value


def check_bool(
    name: str, value: Any, *, hint: str = "", error: type[Exception] = ConfigError
) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value, hint, error)
    return value


def check_backend() -> None:
    """Refuses a Keras backend other than TensorFlow, before Keras is imported for it.

    Keras takes its backend from `KERAS_BACKEND` (an empty value is ignored), else from
    `keras.json` in `KERAS_HOME` (`~/.keras`); once Keras is imported, from Keras.

    Raises:
        ConfigError: the backend is another one, naming where it was set.
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        backend, where = keras.config.backend(), "Keras' backend"
    elif os.environ.get("KERAS_BACKEND"):
        backend, where = os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    else:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json")) as file:
                backend = str(json.load(file).get("backend", "tensorflow"))
        except (OSError, ValueError, AttributeError):
            backend = "tensorflow"
        where = f"the backend in {os.path.join(home, 'keras.json')}"
    if backend.strip().lower() != "tensorflow":
        raise ConfigError(
            f"finetunekit runs on Keras' TensorFlow backend; {where} is {backend!r}. Set "
            "KERAS_BACKEND=tensorflow before Python starts (or unset it and change keras.json)."
        )
