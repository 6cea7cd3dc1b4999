"""Checkpoints of a whole fit, and resuming one: no lost work when a run is killed.

`FineTuner.fit(..., checkpoint_dir=DIR)` writes, after every epoch, one file
`DIR/checkpoint.npz` holding where the run is in its schedule (phase, epoch), every
variable of the model (weights, BatchNormalization statistics, the random state of
dropout), the optimizer's variables (its step count and slots), the best weights so
far with their epoch and `val_loss`, early stopping's state, the history so far, the
settings of the call and a fingerprint of the data. The same call with the same
folder resumes after the last finished epoch: each phase rebuilds what trains and its
optimizer as it always does (`training.compile_phase`), the stored optimizer state is
put back into it, and stored features are recomputed (they are not saved). Shuffle
orders are keyed by (seed, epoch) (see `_orders.py`), so a resumed run with a seed
draws the orders the uninterrupted run draws.

Keras' `BackupAndRestore` is not enough: it works inside one `fit()` call (a fine-tune
is several, one per phase), deletes its backup when that call ends, restores neither
the callbacks' state (best weights, early stopping) nor which phase was running, and
its restored `initial_epoch` leaks into the next `fit()`. So the state of the whole
schedule is written here, with Keras' own variables as the content.

Every write goes to a temporary file beside the target, is flushed to disk, and is
renamed over it (`os.replace`): a kill during a write leaves the previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from finetunekit import distribute
from finetunekit._atomic import check_writable, write_beside
from finetunekit._orders import orders_of
from finetunekit.data._arrays import unpack_arrays
from finetunekit.errors import CheckpointError

__all__ = ["Tracker", "describe_call", "fingerprint", "read", "write_atomically", "FILE", "FORMAT"]

logger = logging.getLogger("finetunekit")

#: The checkpoint file inside `checkpoint_dir`.
FILE = "checkpoint.npz"
#: Version of the layout of the file.
# 2: the augmentation described by its settings, files by their paths from their folder.
FORMAT = 2
#: Images (or files) whose content the data fingerprint hashes.
_SAMPLE = 16


# -- what a fit is: its settings and its data --------------------------------------------


def describe_call(tuner: Any, recipe: Any, views: int | None = None) -> dict[str, Any]:
    """The settings of a `FineTuner.fit` that decide its result: the recipe and the tuner's.

    `views`: the augmented views per image the fit stores, as `augment_views` resolved
    for its data (`"auto"` depends on the number of images).
    """
    base = tuner._base_arg
    optimizer = tuner._compile_args.get("optimizer", "adam")
    return {
        "views": views if tuner.augment is not None else None,
        "recipe": _plain(dataclasses.asdict(recipe)),
        "base": base if isinstance(base, str) else os.fspath(base)
        if isinstance(base, os.PathLike) else type(base).__name__,
        "weights": None if tuner.weights is None else os.fspath(tuner.weights),
        "input_shape": None if tuner.input_shape is None else list(tuner.input_shape),
        "task": tuner.task,
        "num_classes": tuner.num_classes,
        "seed": tuner.seed,
        "cache": tuner.cache,
        "augment": _layer_settings(tuner.augment),
        "optimizer": optimizer if isinstance(optimizer, str) else _plain(optimizer.get_config()),
        "base_kwargs": _plain(tuner.base_kwargs),
    }


def _layer_settings(layer: Any) -> Any:
    """A layer's configuration without its layers' names (Keras numbers unnamed layers
    in the order a process makes them: `random_flip_3` in one run, `_1` in the next)."""
    if layer is None:
        return None
    try:
        config = keras.saving.serialize_keras_object(layer)
    except Exception:  # noqa: BLE001 - a layer that cannot say its config: its class
        return type(layer).__name__

    def unnamed(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("class_name") == "InputLayer":  # added once the layer has run
                return None
            layer = "trainable" in value  # a layer's config, whose "name" is dropped
            return {
                k: unnamed(v)
                for k, v in value.items()
                if k not in _BUILD_STATE and not (layer and k == "name")
            }
        if isinstance(value, list):
            return [u for u in map(unnamed, value) if u is not None]
        return value

    return _plain(unnamed(config))


#: What a layer's serialized form gains once it has run (a resume in the same process
#: must describe the augmentation as the first run did).
_BUILD_STATE = frozenset({"build_config", "build_input_shape", "compile_config"})


def _views_before(stored: Any) -> Any:
    """A stored call without `views` (written before "auto" depended on the number of
    images), with the views that run stored: "auto" was 4, at most the longest phase."""
    if not isinstance(stored, dict) or "views" in stored or stored.get("augment") is None:
        return stored
    recipe = stored.get("recipe") or {}
    asked = recipe.get("augment_views", "auto")
    if asked == "auto":
        head, finetune = recipe.get("head_epochs", 0), recipe.get("finetune_epochs", 0)
        longest = max(head, finetune if recipe.get("unfreeze") else 0)
        return {**stored, "views": max(1, min(4, longest))}
    return {**stored, "views": asked}


def _views_changed(found: list[str]) -> str:
    """Why the views differ, when they do."""
    if not any(line.startswith("views:") for line in found):
        return ""
    return (
        "augment_views='auto' stores 2 augmented views per image from 1,000 training "
        "images on (4 below); a run written with another number of views cannot continue "
        "its draws. "
    )


def _old_preset(stored: Any, asked: Any) -> str:
    """Why a run written with the augmentation preset of Keras' three layers differs."""
    before = str((stored or {}).get("augment") if isinstance(stored, dict) else None)
    now = str((asked or {}).get("augment") if isinstance(asked, dict) else None)
    if "RandomRotation" in before and "FlipRotateZoom" in now:
        return (
            "If that run had augment='default': finetunekit's preset was then Keras' "
            "RandomFlip, RandomRotation and RandomZoom, and now draws the same transforms "
            "as one layer, which cannot continue that run's draws. "
        )
    return ""


def bind_fit(
    tracker: Tracker,
    tuner: Any,
    recipe: Any,
    data: tuple[Any, Any, Any],
    *,
    find: bool,
    views: int | None = None,
) -> None:
    """Binds `tracker` to one `FineTuner.fit`: its call, and `data` (train, y,
    validation_data); every worker alike. `find`: the call asked for a rate sweep;
    `views`: the augmented views per image it stores.

    Raises:
        CheckpointError: the folder holds a run of other settings or data.
        DataError: the workers would resume at different epochs.
    """
    call = describe_call(tuner, recipe, views)
    if find:  # the call asked for a sweep; the rate it found is stored beside
        call["recipe"]["head_learning_rate"] = "find"
    with distribute.together(tuner.strategy, "checking its checkpoint"):
        tracker.bind(call, fingerprint(*data))
    position = ",".join(map(str, tracker.position)).encode()
    distribute.check_same_data(
        tuner.strategy, int.from_bytes(hashlib.sha256(position).digest()[:8], "little"),
        "checkpoints (each would resume at another epoch)",
        "give every worker its own copy of the same checkpoint_dir, or a new one.",
    )


#: Fingerprint keys added after checkpoints were first written: a checkpoint without
#: them still resumes (it is compared on what it holds).
_NEW_DATA_KEYS = frozenset({"first_batch"})


def fingerprint(train: Any, y: Any = None, validation_data: Any = None) -> dict[str, Any]:
    """Count, shapes and a content hash of a sample of the training and validation data.

    Arrays: their length, shape, dtype, a hash of 16 evenly spaced images and of every
    label. Datasets: their element structure and length in batches, the class names,
    and for datasets of files (`from_directory`, Keras' loaders) the number of files and
    a hash of their paths and of the bytes of 16 of them; for other datasets (and a
    `keras.utils.PyDataset`), a hash of the first batch, read twice: a dataset that
    shuffles itself gives another first batch at every pass, so its batches are not
    sampled.
    """
    return {"train": _describe(train, y), "validation": _describe(validation_data)}


def _describe(data: Any, y: Any = None) -> Any:
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        found: dict[str, Any] = {
            "elements": str(data.element_spec),
            "batches": int(data.cardinality()),
            "class_names": list(getattr(data, "class_names", None) or []) or None,
        }
        paths = getattr(data, "file_paths", None)
        if paths:
            paths = sorted(os.path.abspath(p) for p in map(str, paths))
            # Relative to the folder that holds them all: the same folder named from
            # another working directory (or moved) is the same data.
            root = os.path.dirname(os.path.commonpath(paths)) if len(paths) > 1 else ""
            names = [os.path.relpath(p, root) if root else os.path.basename(p) for p in paths]
            digest = hashlib.sha256("\n".join(names).encode())
            for path in paths[:: max(1, len(paths) // _SAMPLE)][:_SAMPLE]:
                try:
                    digest.update(Path(path).read_bytes())
                except OSError:
                    digest.update(b"<unreadable>")
            found.update(files=len(paths), content=digest.hexdigest()[:16])
        elif orders_of(data) is None:  # arrays shuffled per epoch (from_arrays) shuffle
            found["first_batch"] = _first_batch(lambda: next(iter(data)))
        else:
            found["first_batch"] = None
        return found
    if isinstance(data, keras.utils.PyDataset):
        return {"type": type(data).__name__, "first_batch": _first_batch(lambda: data[0])}
    data, y, weights = unpack_arrays(data, y)
    try:
        x, labels = np.asarray(data), np.asarray(y)
        weighed = None if weights is None else np.asarray(weights)
    except (TypeError, ValueError):
        return {"type": type(data).__name__}
    if x.ndim == 0 or x.dtype == object or labels.dtype == object:
        return {"type": type(data).__name__}
    rows = np.unique(np.linspace(0, len(x) - 1, num=min(len(x), _SAMPLE)).astype(int))
    digest = hashlib.sha256(np.ascontiguousarray(x[rows]).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    if weighed is not None:
        digest.update(b"weights" + np.ascontiguousarray(weighed).tobytes())
    return {
        "count": len(x),
        "shape": list(x.shape[1:]),
        "dtype": str(x.dtype),
        "labels": f"{labels.dtype}{list(labels.shape)}",
        "content": digest.hexdigest()[:16],
    }


def _plain(value: Any) -> Any:
    """`value` as JSON types (what is not is kept as its repr)."""
    return json.loads(json.dumps(value, default=repr))


def _first_batch(read: Any) -> str | None:
    """A hash of the first batch of a dataset that gives the same one at every pass;
    None for one that shuffles itself (or cannot be read: the fit reports that)."""
    digests = set()
    for _ in range(2):
        try:
            batch = read()
        except Exception:  # empty, or failing: the fit's own checks name the problem
            return None
        digest = hashlib.sha256()
        for part in tf.nest.flatten(batch):
            part = np.asarray(part)
            if part.dtype == object:  # strings: their bytes are addresses, not content
                return None
            digest.update(part.tobytes())
        digests.add(digest.hexdigest()[:16])
    return digests.pop() if len(digests) == 1 else None


def _differences(
    stored: Any, asked: Any, where: str = "", *, new_keys: frozenset[str] = frozenset()
) -> list[str]:
    """What differs between two JSON trees; keys in `new_keys` that `stored` lacks (a
    checkpoint written before they were recorded) are not compared."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        found = []
        for key in sorted(set(stored) | set(asked), key=str):
            if key in new_keys and key not in stored:
                continue
            found += _differences(
                stored.get(key), asked.get(key), f"{where}{key}.", new_keys=new_keys
            )
        return found
    if stored != asked:
        return [f"{where.rstrip('.')}: stored {stored!r}, asked {asked!r}"]
    return []


def read(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The state (as JSON types) and the arrays of the checkpoint in `directory`, if any.

    Raises:
        CheckpointError: the file cannot be read.
    """
    path = Path(directory).expanduser() / FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        state = json.loads(str(arrays.pop("state")))
    except Exception as exc:  # a file that is not ours, or damaged outside finetunekit
        raise CheckpointError(
            f"Could not read the checkpoint {str(path)!r} ({type(exc).__name__}: {exc}). "
            f"Delete {str(path.parent)!r} or pass a new checkpoint_dir."
        ) from exc
    return state, arrays


# -- the tracker of one fit ----------------------------------------------------------------


class Tracker:
    """Records the epochs of one fit; with a folder, checkpoints them and resumes from them.

    Created by `FineTuner.fit` (without a folder too: the epochs it keeps are what
    `tuner.history` holds after a Ctrl-C) and used by `training.run_phases`.

    Args:
        directory: the checkpoint folder (created if missing), or None.
        resume: refuse to start afresh: the folder must hold a checkpoint.

    Raises:
        CheckpointError: the folder is a file, its checkpoint cannot be read, or it
            holds none while `resume` is True.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, *, resume: bool = False) -> None:
        self.directory = None if directory is None else Path(directory).expanduser()
        self.call: dict[str, Any] = {}
        self.data: dict[str, Any] = {}
        self.state: dict[str, Any] | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []  # epochs of the running phase
        self.history: Any = None
        #: Values the run decided once and a resume must reuse (the found head rate).
        self.extra: dict[str, Any] = {}
        if self.directory is None:
            if resume:
                raise CheckpointError(
                    "resume=True needs a checkpoint_dir: pass the folder of the run to resume."
                )
            return
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(
                f"checkpoint_dir {str(self.directory)!r} is a file; pass a folder (it is "
                "created if missing), e.g. checkpoint_dir='checkpoints/run1'."
            )
        # Now, not after the first epoch's work: a folder that cannot be written.
        check_writable(self.directory / FILE, "checkpoint_dir", error=CheckpointError)
        self._load()
        if self.state is None and resume:
            raise CheckpointError(
                f"resume=True, but {str(self.directory)!r} holds no checkpoint ({FILE}). "
                "Pass the checkpoint_dir of the run to resume, or drop resume to start a new "
                "run there."
            )

    @property
    def position(self) -> tuple[int, int, int, bool, bool]:
        """Where the stored run stands: (epochs done, phase, epoch in it, phase done,
        finished); all zeros and False without one."""
        if self.state is None:
            return (0, 0, 0, False, False)
        state = self.state
        return (
            int(state["epochs_done"]),
            int(state["phase"]),
            int(state["in_phase"]),
            bool(state["phase_done"]),
            bool(state.get("finished")),
        )

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / FILE

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.directory is not None
        stored = read(self.directory)
        if stored is None:
            return
        state, arrays = stored
        if state.get("format") != FORMAT:
            raise CheckpointError(
                f"{str(self.path)!r} is a checkpoint of format {state.get('format')!r}; this "
                f"finetunekit writes format {FORMAT}. Delete it or pass a new checkpoint_dir."
            )
        self.state, self._arrays = state, arrays
        self.extra = dict(state.get("extra", {}))

    def bind(self, call: dict[str, Any], data: dict[str, Any]) -> None:
        """Sets the call and data this run is; refuses a stored run of another.

        Args:
            call: `describe_call` of the fit.
            data: `fingerprint` of its data.

        Raises:
            CheckpointError: the stored run had other settings or other data.
        """
        self.call, self.data = _plain(call), _plain(data)
        state = self.state
        if state is None:
            return
        stored_call = _views_before(state.get("call"))
        for what, stored, asked in (
            ("settings", stored_call, self.call), ("data", state.get("data"), self.data)
        ):
            found = _differences(stored, asked, new_keys=_NEW_DATA_KEYS)
            if found:
                more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
                raise CheckpointError(
                    f"checkpoint_dir {str(self.directory)!r} holds a run with other {what} "
                    f"than this fit: {'; '.join(found[:3])}{more}. "
                    + _old_preset(stored, asked)
                    + _views_changed(found)
                    + "Resuming would mix two runs: pass a new checkpoint_dir, or delete "
                    f"{str(self.directory)!r} to start this fit afresh."
                )

    @property
    def finished(self) -> bool:
        return bool(self.state and self.state.get("finished"))

    def skips(self, index: int) -> bool:
        """Whether phase `index` ran to its end before the run was stopped."""
        return self.state is not None and index < int(self.state["phase"])

    def restore_model(self, model: keras.Model, history: Any, run: Any) -> bool:
        """Before anything runs: puts the stored model, history and best weights back.

        The model's variables come back before the feature pass: its frozen layers have
        their values of the first run (with `weights=None`, a new process would draw
        others). Returns whether the stored run had finished.
        """
        self.history = history
        if self.state is None:
            return False
        state = self.state
        _assign(model.variables, self._stored("w"), "the model")
        history.history = {k: list(v) for k, v in state["history"].items()}
        history.epoch = list(state["epoch"])
        history.phases = list(state["phases"])
        from finetunekit.training import PhaseReport

        history.reports = [PhaseReport(**r) for r in state["reports"]]
        history.best_epoch = state["best"]["epoch"]
        run.epochs_done = int(state["epochs_done"])
        if self.finished:
            logger.warning(
                "checkpoint_dir %r holds a finished run (%s): returning its result "
                "without training. Delete the folder or pass a new checkpoint_dir to train "
                "again.",
                str(self.directory),
                f"{run.epochs_done} epoch" + ("" if run.epochs_done == 1 else "s"),
            )
        else:
            logger.warning("resuming from %r after epoch %d (%s)", str(self.directory),
                           run.epochs_done, _where(history.phases, int(state["in_phase"])))
        return self.finished

    def restore_best(self, best: Any) -> None:
        """Puts the stored best weights, `val_loss` and epoch into a `BestWeights`."""
        if self.state is None or best is None:
            return
        loss = self.state["best"]["loss"]
        best.best = math.inf if loss is None else float(loss)
        best.best_epoch = self.state["best"]["epoch"]
        variables = list(best.target.weights)
        for key, value in self._arrays.items():
            if key.startswith("b"):
                best._values[id(variables[int(key[1:])])] = value

    def resumes(self, index: int) -> tuple[int, bool]:
        """For phase `index`: epochs of it already run, and whether it had ended."""
        if self.state is None or int(self.state["phase"]) != index:
            return 0, False
        return int(self.state["in_phase"]), bool(self.state["phase_done"])

    def _stored(self, prefix: str) -> list[np.ndarray]:
        count = sum(1 for key in self._arrays if key[0] == prefix and key[1:].isdigit())
        return [self._arrays[f"{prefix}{i}"] for i in range(count)]

    # -- the callback of a phase -----------------------------------------------------------

    def phase_callback(
        self,
        model: keras.Model,
        index: int,
        phase: Any,
        run: Any,
        stopper: keras.callbacks.EarlyStopping | None,
    ) -> keras.callbacks.Callback:
        """The callback that records (and checkpoints) each epoch of phase `index`.

        When the run resumes inside this phase, the optimizer (built, fresh) gets its
        stored variables back here, and early stopping its wait and best.
        """
        done, _ = self.resumes(index)
        restore_stopper = None
        if done and self.state is not None:
            _assign(model.optimizer.variables, self._stored("o"), "the optimizer")
            restore_stopper = self.state.get("stopper")
        return _EpochRecorder(self, model, index, phase, run, stopper, done, restore_stopper)

    def _record(self, phase: str, logs: dict[str, Any]) -> None:
        self._pending.append((phase, dict(logs)))

    def flush_phase(self) -> None:
        """The running phase ended: its epochs are on the history now."""
        self._pending = []

    def _history_now(self) -> tuple[dict[str, list[Any]], list[int], list[str]]:
        """The history with the running phase's epochs so far."""
        history = self.history
        values = {k: list(v) for k, v in history.history.items()}
        epochs, phases = list(history.epoch), list(history.phases)
        for phase, logs in self._pending:
            done = len(phases)
            for key, value in logs.items():
                values.setdefault(key, [float("nan")] * done).append(float(value))
            for series in values.values():
                series.extend([float("nan")] * (done + 1 - len(series)))
            epochs.append(done)
            phases.append(phase)
        return values, epochs, phases

    # -- writing ---------------------------------------------------------------------------

    def save(
        self,
        model: keras.Model,
        run: Any,
        *,
        phase: int,
        in_phase: int,
        phase_done: bool = False,
        finished: bool = False,
        stopper: keras.callbacks.EarlyStopping | None = None,
        optimizer: bool = True,
    ) -> None:
        """Writes the checkpoint (atomically); does nothing without a folder."""
        if self.directory is None:
            return
        values, epochs, phases = self._history_now()
        best = run.best
        state = {
            "format": FORMAT,
            "call": self.call,
            "data": self.data,
            "finished": finished,
            "phase": phase,
            "in_phase": in_phase,
            "phase_done": phase_done,
            "epochs_done": len(epochs),
            "history": values,
            "epoch": epochs,
            "phases": phases,
            "reports": [dataclasses.asdict(r) for r in self.history.reports],
            "extra": _plain(self.extra),
            "best": {
                "loss": None if best is None or math.isinf(best.best) else best.best,
                "epoch": None if best is None else best.best_epoch,
            },
            "stopper": None
            if stopper is None
            else {
                "wait": int(stopper.wait),
                "best": None if stopper.best is None else float(stopper.best),
                "best_epoch": int(stopper.best_epoch),
            },
        }
        arrays: dict[str, Any] = {"state": np.array(json.dumps(state))}
        for i, variable in enumerate(model.variables):
            arrays[f"w{i}"] = variable.numpy()
        if optimizer and model.optimizer is not None and model.optimizer.built:
            for i, variable in enumerate(model.optimizer.variables):
                arrays[f"o{i}"] = variable.numpy()
        if best is not None:
            for i, variable in enumerate(best.target.weights):
                value = best._values.get(id(variable))
                if value is not None:
                    arrays[f"b{i}"] = value
        assert self.path is not None
        write_atomically(self.path, lambda handle: np.savez(handle, **arrays))

    def interrupted(self, model: keras.Model, run: Any) -> None:
        """After a Ctrl-C: the epochs that ran on the history, the best weights back, a hint."""
        history = self.history
        if history is not None and self._pending:
            values, epochs, phases = self._history_now()
            history.history, history.epoch, history.phases = values, epochs, phases
            self._pending = []
        best = run.best
        if best is not None and best._values:
            best.restore(everything=True)  # wherever the stop came
            history.best_epoch = best.best_epoch
            epoch = best.best_epoch + 1 if best.best_epoch is not None else "?"
            kept = f"the best weights so far (epoch {epoch}, val_loss {best.best:.4g})"
        else:
            kept = "the weights of the last step that ran"
        done = len(history.epoch) if history is not None else 0
        if self.directory is not None:
            hint = (
                f"run the same fit with checkpoint_dir={str(self.directory)!r} to resume after "
                f"epoch {done} (the last one finished)"
            )
        else:
            hint = "pass checkpoint_dir=... to fit to make a run resumable after a stop"
        logger.warning(
            "fit interrupted after %d epoch%s: the model holds %s; %s",
            done, "" if done == 1 else "s", kept, hint,
        )


class _EpochRecorder(keras.callbacks.Callback):
    """Records each epoch of one phase and writes a checkpoint after it.

    Comes after early stopping and the best-weights callback, so what it writes is their
    state after the epoch.
    """

    def __init__(
        self,
        tracker: Tracker,
        model: keras.Model,
        index: int,
        phase: Any,
        run: Any,
        stopper: keras.callbacks.EarlyStopping | None,
        done: int,
        restore_stopper: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.tracker, self.target, self.index, self.phase = tracker, model, index, phase
        self.run, self.stopper, self.done = run, stopper, done
        self._restore_stopper = restore_stopper

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        state = self._restore_stopper
        if self.stopper is not None and state is not None:  # after its own reset
            self.stopper.wait = state["wait"]
            self.stopper.best = state["best"]
            self.stopper.best_epoch = state["best_epoch"]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.done += 1
        self.tracker._record(self.phase.name, logs or {})
        ended = bool(self.target.stop_training) or self.done >= self.phase.epochs
        self.tracker.save(
            self.target,
            self.run,
            phase=self.index,
            in_phase=self.done,
            phase_done=ended,
            stopper=self.stopper,
        )


def _assign(variables: Sequence[Any], values: Sequence[np.ndarray], what: str) -> None:
    shapes = [tuple(v.shape) for v in variables]
    if len(values) != len(variables) or any(
        tuple(value.shape) != shape for value, shape in zip(values, shapes, strict=False)
    ):
        raise CheckpointError(
            f"The checkpoint's state of {what} ({len(values)} variables) does not fit this "
            f"one ({len(variables)}): it was written for another model. Pass a new "
            "checkpoint_dir, or delete the old one."
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def write_atomically(path: str | os.PathLike[str], write: Any) -> None:
    """Calls `write(handle)` on a temporary file beside `path`, then renames it over `path`.

    The file is flushed to disk before the rename, so `path` is always either the old
    file or the complete new one; on an error the temporary file is removed.
    """
    with write_beside(Path(path), log=False) as temporary, open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _where(phases: list[str], in_phase: int) -> str:
    """Where a resumed run stands, in words: `phases` names the phase of each epoch done."""
    if not phases:
        return "no epoch done yet"
    if in_phase == 0:  # the last epoch closed its phase; the next phase starts afresh
        return f"the last of the {phases[-1]} phase"
    return f"epoch {in_phase} of the {phases[-1]} phase"
