"""What a fine-tune should do: a `Recipe`, and the `Phase`s it turns into.

A fine-tune is a list of phases. `Recipe` holds every setting of `FineTuner.fit`;
`Recipe.phases()` turns it into a tuple of `Phase`s (the classic schedule: the head
with the whole base frozen, then the last blocks of the base unfrozen at a lower
rate); `plan(model, phases)` describes those phases on a model. `FineTuner.fit`
runs the same phases that `FineTuner.plan` describes, so the two cannot disagree.

This module imports no TensorFlow: the command line reads its defaults from here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict

from finetunekit._checks import check_bool, check_choice, check_float, check_int
from finetunekit.errors import ConfigError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger("finetunekit")

__all__ = [
    "Recipe",
    "RecipeSettings",
    "DEFAULTS",
    "Phase",
    "PhasePlan",
    "Plan",
    "plan",
    "HEAD",
    "FINETUNE",
    "is_finetune",
    "check_lr_decay",
]

HEAD, FINETUNE = "head", "finetune"

#: Augmented views per image that `augment_views="auto"` stores (chosen on training data
#: with `benchmarks/bench_views.py`, see the benchmarks page)...
AUTO_VIEWS = 4
#: ...and from `MANY_IMAGES` images given to `fit` on (counted before the held-out
#: split), where 2 views matched 4 and fresh augmentation every epoch in
#: cross-validation on flowers-large (1,326 images given to each fit).
AUTO_VIEWS_MANY = 2
MANY_IMAGES = 1000
Unit = Literal["layer", "block"]


@dataclass(frozen=True)
class Phase:
    """One phase of a fine-tune: what trains, how fast, for how long.

    Attributes:
        name: `"head"` or `"finetune"`.
        epochs: the most epochs the phase runs (early stopping may end it sooner).
        unfreeze: how many blocks (or layers, see `unit`) at the end of the base train;
            0 freezes the whole base (only the head trains).
        unit: `"block"` or `"layer"`.
        train_bn: whether BatchNormalization in the unfrozen part trains.
        learning_rate: the learning rate of the phase's (fresh) optimizer.
        early_stopping: whether early stopping on `val_loss` watches the phase.
        patience: epochs without improvement before early stopping ends the phase.
        lr_decay: None for one rate; else the k-th unfrozen block from the top trains
            at `learning_rate * lr_decay**k` (the head at `learning_rate`).
        warmup: epochs (possibly fractional) of linear warm-up from 0 to the rate.
        cosine: whether the rate decays along a cosine to 0 over the phase.
    """

    name: str
    epochs: int
    unfreeze: int
    unit: Unit
    train_bn: bool
    learning_rate: float
    early_stopping: bool
    patience: int
    lr_decay: float | None = None
    warmup: float = 0.0
    cosine: bool = False

    @property
    def trains_base(self) -> bool:
        return self.unfreeze > 0


@dataclass(frozen=True)
class Recipe:
    """Every setting of `FineTuner.fit`; `DEFAULTS` is the recipe `fit()` uses.

    `NOTES` says, per field, how its default was chosen. Build a variant with
    `dataclasses.replace(DEFAULTS, head_epochs=5)` or `Recipe(head_epochs=5)`.

    Attributes:
        head_epochs: epochs with the whole base frozen (0 to skip).
        finetune_epochs: epochs after unfreezing (0 to skip).
        unfreeze: how many blocks (or layers, see `unit`) of the base to unfreeze; an
            increasing tuple such as `(1, 2, 4)` unfreezes gradually: one fine-tune
            phase of `finetune_epochs` per entry (`"finetune-1"`, `"finetune-2"`, ...).
        unit: `"block"` or `"layer"`.
        head_learning_rate: learning rate of the head phase.
        finetune_learning_rate: learning rate after unfreezing (kept low so the
            pretrained features are not destroyed).
        train_bn: train BatchNormalization scale/offset in the unfrozen part.
        hidden: hidden layer sizes of the head.
        dropout: dropout of the head.
        normalize: unit-length pooled features in the head; None means the task's
            default (True for classification, False for regression).
        early_stopping: early stopping on `val_loss`, best weights of the whole fit kept.
        patience: epochs without improvement before a phase stops.
        validation_split: without validation data, the fraction of training images held
            out (by content) for early stopping; 0 disables it.
        batch_size: batch size for arrays.
        augment_views: with `FineTuner(augment=...)` and cached phases, how many
            augmented views of each training image the frozen layers run over (once
            each); every epoch trains on one of them per image, drawn afresh. `"auto"`:
            4 views, 2 from 1,000 images in the training data on (counted before the
            held-out split), but no more than the longest phase has epochs (see
            `views`).
        lr_decay: per-block learning rates in fine-tune phases: None for one rate, else
            a factor in (0, 1]; the k-th unfrozen block from the top trains at the
            phase's rate times `lr_decay**k`, the head at the phase's rate.
        warmup: linear warm-up of the rate at the start of every phase: 0 for none, a
            fraction in (0, 1) of the phase's epochs, or a whole number of epochs
            (shorter than every phase).
        cosine: the rate of every phase decays along a cosine to 0 over its epochs.

    Raises:
        ConfigError: a setting out of range (checked when the recipe is made, before
            any image is read).
    """

    head_epochs: int = 100
    finetune_epochs: int = 10
    unfreeze: int | tuple[int, ...] = 2
    unit: Unit = "block"
    head_learning_rate: float = 1.5e-2
    finetune_learning_rate: float = 1e-5
    train_bn: bool = False
    hidden: tuple[int, ...] = ()
    dropout: float = 0.5
    normalize: bool | None = None
    early_stopping: bool = True
    patience: int = 10
    validation_split: float = 0.2
    batch_size: int = 32
    augment_views: int | Literal["auto"] = "auto"
    lr_decay: float | None = None
    warmup: float = 0
    cosine: bool = False

    NOTES: ClassVar[dict[str, str]] = {
        "head_epochs": (
            "With the frozen layers cached, head epochs cost almost nothing, so the head "
            "trains until early stopping ends it; unit-length features converge slowly, "
            "hence a cap of 100."
        ),
        "finetune_epochs": "Enough for early stopping to find the best epoch at 1e-5.",
        "unfreeze": (
            "2 blocks kept what the head reached on the 350 flowers; 4 and more overfit. "
            "Gradual unfreezing (1, 2, 4) did not win by 5-fold cross-validation on "
            "flowers/train (0.800 against 0.811, lost 3 folds, tied 2; "
            "benchmarks/bench_schedules.py), so one stage of 2 stays."
        ),
        "head_learning_rate": (
            "On unit-length features 1.5e-2 beat the plain head at 3e-3 on flowers/test "
            "scores (an earlier choice). Re-checked by 5-fold cross-validation on "
            "flowers/train at 160 px: 1.5e-2 0.811, 5e-3 0.806 (tied 4 folds, lost 1), "
            "5e-2 0.803 (tied 2, lost 3); nothing beat it, so it stays."
        ),
        "finetune_learning_rate": "1e-4 overfit the 350 images; 1e-5 kept the head's gains.",
        "dropout": (
            "0.5 gave the best mean flowers/test accuracy over seeds 0-9 (an earlier choice "
            "on test scores). Re-checked by 5-fold cross-validation on flowers/train: "
            "0.5 0.811 against 0.2 0.809 (won 1 fold, tied 3, lost 1): no winner, it stays."
        ),
        "lr_decay": (
            "None (one rate): unfreeze=4 with lr_decay=0.5 tied the defaults on all 5 folds "
            "of flowers/train and lost 1 of 5 on flowers-large (likely because at a "
            "fine-tune rate of 1e-5 the lower blocks barely move)."
        ),
        "warmup": (
            "0: a warm-up of 0.1 with a cosine decay tied on 4 folds and lost 1 "
            "(0.809 against 0.811), and took longer (early stopping waits out the warm-up)."
        ),
        "cosine": "False: see warmup (they were measured together).",
        "normalize": "Unit-length features generalised better on small data.",
        "patience": "Unit-length features need more epochs between improvements than 5.",
        "validation_split": "20% held out by content: the same split in every epoch.",
        "augment_views": (
            "Chosen by 3-fold cross-validation on the 350 training photos (160 px, 5+5 "
            "epochs, augment='default'): 4 views 0.795, uncached augmentation 0.789, 1 view "
            "0.789, 16 views 0.806 at about 3.5x the time of 4; all within the folds' spread "
            "(about 0.02), so the cheapest that matches fresh augmentation. From 1,000 "
            "images in the training data on (before the held-out split), 2: 3-fold "
            "cross-validation on flowers-large (1,326 images a fit): 2 views 0.839 and "
            "0.850 at 5+5 and 10+10 epochs, 4 views 0.843 "
            "and 0.850, uncached 0.835 and 0.846; 2 views matched fresh augmentation on "
            "every fold."
        ),
    }

    def __post_init__(self) -> None:
        check_int("head_epochs", self.head_epochs, minimum=0)
        check_int("finetune_epochs", self.finetune_epochs, minimum=0)
        object.__setattr__(self, "unfreeze", _unfreeze(self.unfreeze))
        check_choice("unit", self.unit, ("block", "layer"))
        for name in ("head_learning_rate", "finetune_learning_rate"):
            check_float(name, getattr(self, name), low=0, expected="a positive number, e.g. 1e-3")
        check_bool("train_bn", self.train_bn)
        object.__setattr__(self, "hidden", _hidden(self.hidden))
        check_float("dropout", self.dropout, low=0, high=1, include_low=True, expected=(
            "a rate in [0, 1)"
        ))
        if self.normalize is not None:
            check_bool("normalize", self.normalize)
        check_bool("early_stopping", self.early_stopping)
        check_int("patience", self.patience, minimum=0)
        check_float(
            "validation_split",
            self.validation_split,
            low=0,
            high=1,
            include_low=True,
            expected="in [0, 1)",
        )
        check_int("batch_size", self.batch_size, minimum=1, expected="a positive int")
        if self.augment_views != "auto":
            check_int(
                "augment_views", self.augment_views, minimum=1,
                expected='"auto" or an int >= 1 (augmented views stored per image)',
            )
        object.__setattr__(self, "lr_decay", check_lr_decay(self.lr_decay))
        _check_warmup(self.warmup, self)
        check_bool("cosine", self.cosine)

    def views(self, images: int | None = None) -> int:
        """The augmented views per image a fit with this recipe stores (`augment_views`).

        Args:
            images: how many images the fit's training data holds (before the
                held-out split), if known: `"auto"` stores `AUTO_VIEWS_MANY` views from
                `MANY_IMAGES` on, else `AUTO_VIEWS`.
        """
        if self.augment_views != "auto":
            return int(self.augment_views)
        longest = max(self.head_epochs, self.finetune_epochs if self.unfreeze else 0)
        many = images is not None and images >= MANY_IMAGES
        return max(1, min(AUTO_VIEWS_MANY if many else AUTO_VIEWS, longest))

    @property
    def stages(self) -> tuple[int, ...]:
        """The block counts of the fine-tune phases (`(2,)` for `unfreeze=2`)."""
        unfreeze = self.unfreeze
        return unfreeze if isinstance(unfreeze, tuple) else ((unfreeze,) if unfreeze else ())

    @classmethod
    def from_keywords(cls, base: Recipe | None = None, **keywords: Any) -> Recipe:
        """`base` (default `DEFAULTS`) with the given settings replaced.

        Raises:
            ConfigError: an unknown setting, or a value out of range.
        """
        if base is not None and not isinstance(base, Recipe):
            raise ConfigError(
                f"recipe must be a finetunekit.Recipe; received {type(base).__name__}. Build "
                "one with Recipe(head_epochs=..., ...), or pass the settings as keywords."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        refuse_unknown(keywords, names, "a Recipe has")
        return dataclasses.replace(base or DEFAULTS, **keywords)

    def with_head(self, built: dict[str, Any], asked: set[str]) -> Recipe:
        """This recipe with the head a model already has: a fit does not rebuild a head.

        Args:
            built: the head's settings (`hidden`, `dropout`, `normalize`); empty for a
                model whose head finetunekit did not build (the recipe is returned).
            asked: the settings the caller passed; those that differ from `built` are
                not applied, and a warning says so.
        """
        differ = [k for k in built if k in asked and getattr(self, k) != built[k]]
        ignored = {k: getattr(self, k) for k in differ}
        if ignored:
            logger.warning(
                "the model already has a head (%s); this fit trains it and does not apply %s. "
                "Use a new FineTuner to fit another head.",
                ", ".join(f"{k}={v!r}" for k, v in built.items()),
                ", ".join(f"{k}={v!r}" for k, v in ignored.items()),
            )
        return dataclasses.replace(self, **built)

    def phases(self, *, validation: bool = True) -> tuple[Phase, ...]:
        """The phases a fit with this recipe runs, in order.

        Args:
            validation: whether there will be validation data (given, or held out);
                without it no phase can stop early.

        Returns:
            A tuple of `Phase`: the head phase (when `head_epochs`), then the fine-tune
            phase (when `finetune_epochs` and `unfreeze`), or one per stage of a
            gradual `unfreeze` (`"finetune-1"`, `"finetune-2"`, ...).
        """
        stop = self.early_stopping and validation
        common = dict(
            unit=self.unit,
            train_bn=self.train_bn,
            patience=self.patience,
            cosine=self.cosine,
        )
        phases = []
        if self.head_epochs:
            phases.append(
                Phase(
                    HEAD,
                    self.head_epochs,
                    unfreeze=0,
                    learning_rate=self.head_learning_rate,
                    early_stopping=stop,
                    warmup=_warmup_epochs(self.warmup, self.head_epochs),
                    **common,  # type: ignore[arg-type]
                )
            )
        stages = self.stages if self.finetune_epochs else ()
        for number, count in enumerate(stages, start=1):
            phases.append(
                Phase(
                    FINETUNE if len(stages) == 1 else f"{FINETUNE}-{number}",
                    self.finetune_epochs,
                    unfreeze=count,
                    learning_rate=self.finetune_learning_rate,
                    early_stopping=stop,
                    lr_decay=self.lr_decay,
                    warmup=_warmup_epochs(self.warmup, self.finetune_epochs),
                    **common,  # type: ignore[arg-type]
                )
            )
        return tuple(phases)


#: What to do instead of `keras.Model.fit` arguments that `FineTuner.fit` does not take.
_KERAS_FIT_HINTS = {
    "epochs": "Epochs are per phase: head_epochs=..., finetune_epochs=....",
    "sample_weight": (
        "Pass sample weights inside the data: fit((x, y, w)) with arrays, or a "
        "tf.data.Dataset of (images, labels, weights)."
    ),
    "class_weight": (
        "Weigh classes through sample weights in the data: w = weights_per_class[y], then "
        "fit((x, y, w)), or a tf.data.Dataset of (images, labels, weights)."
    ),
    "steps_per_epoch": (
        "Every epoch reads the whole dataset once; for fewer batches per epoch, pass "
        "ds.take(n)."
    ),
    "validation_split": (
        "train() holds nothing out: pass validation_data=... (fit() splits the training "
        "data by validation_split)."
    ),
}


def refuse_unknown(keywords: Iterable[str], names: Iterable[str], has: str) -> None:
    """Raises for keywords outside `names`, with a hint for those Keras' `fit` takes.

    Raises:
        ConfigError: naming the unknown keywords, what is taken (`has` names it), and how
            to do what Keras' keyword did.
    """
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        hints = "".join(f" {_KERAS_FIT_HINTS[k]}" for k in unknown if k in _KERAS_FIT_HINTS)
        raise ConfigError(
            f"Unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; {has} "
            f"{', '.join(sorted(names))}.{hints}"
        )


class RecipeSettings(TypedDict, total=False):
    """The keywords `FineTuner.fit` and `FineTuner.plan` take: the fields of `Recipe`."""

    head_epochs: int
    finetune_epochs: int
    unfreeze: int | Sequence[int]
    unit: Unit
    head_learning_rate: float | Literal["find"]
    finetune_learning_rate: float
    train_bn: bool
    hidden: Sequence[int]
    dropout: float
    normalize: bool | None
    early_stopping: bool
    patience: int
    validation_split: float
    batch_size: int
    augment_views: int | Literal["auto"]
    lr_decay: float | None
    warmup: float
    cosine: bool


def check_lr_decay(lr_decay: Any) -> float | None:
    """None, or a factor in (0, 1]."""
    if lr_decay is None:
        return None
    value = check_float(
        "lr_decay",
        lr_decay,
        low=0,
        high=math.nextafter(1.0, 2.0),
        expected="None or a factor in (0, 1], e.g. 0.5",
        hint="The k-th unfrozen block from the top trains at rate * lr_decay**k.",
    )
    return value


def is_finetune(name: str) -> bool:
    """Whether a phase name is a fine-tune phase (`"finetune"`, `"finetune-2"`, ...)."""
    return name == FINETUNE or name.startswith(f"{FINETUNE}-")


def _unfreeze(unfreeze: Any) -> int | tuple[int, ...]:
    """An int >= 0, or a strictly increasing tuple of positive ints (one per stage)."""
    hint = "It counts blocks (or layers) at the end of the base; 0 trains the head only."
    if isinstance(unfreeze, (str, bytes)) or not isinstance(unfreeze, Sequence):
        return check_int("unfreeze", unfreeze, minimum=0, hint=hint)
    expected = "an int >= 0 or an increasing sequence of positive ints, e.g. (1, 2, 4)"
    stages = tuple(check_int("unfreeze", n, minimum=1, expected=expected) for n in unfreeze)
    if not stages or any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise ConfigError(
            f"unfreeze must be {expected}; received {tuple(unfreeze)!r}. Each stage unfreezes "
            "more blocks than the one before: list them in increasing order."
        )
    return stages[0] if len(stages) == 1 else stages


def _check_warmup(warmup: Any, recipe: Recipe) -> None:
    expected = "0, a fraction in (0, 1) of each phase, or a whole number of epochs"
    check_float("warmup", warmup, low=0, include_low=True, expected=expected)
    if warmup >= 1 and warmup != int(warmup):
        raise ConfigError(
            f"warmup must be {expected}; received {warmup!r}. Use a fraction below 1 or "
            "whole epochs."
        )
    for name in ("head_epochs", "finetune_epochs"):
        epochs = getattr(recipe, name)
        if warmup >= 1 and epochs and warmup >= epochs:
            raise ConfigError(
                f"warmup={warmup:g} epochs is not shorter than the phase ({name}={epochs}): "
                f"the rate would never reach its value. Use warmup < {epochs}, or a "
                "fraction such as warmup=0.1."
            )


def _warmup_epochs(warmup: float, epochs: int) -> float:
    """The warm-up of a phase of `epochs` epochs, in epochs."""
    return float(warmup * epochs if warmup < 1 else warmup)


def _hidden(hidden: Any) -> tuple[int, ...]:
    if hidden is None:
        return ()
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigError(
            f"hidden must be a sequence of positive layer sizes, e.g. (128,) or (); "
            f"received {hidden!r}."
        )
    return tuple(
        check_int("hidden", h, minimum=1, expected="a sequence of positive layer sizes")
        for h in hidden
    )


DEFAULTS = Recipe()
"""The recipe `FineTuner.fit()` runs when given only data (see `Recipe.NOTES`).

Chosen with `benchmarks/bench_flowers.py` and sweeps on the flowers photos (350 training
images, MobileNetV2 alpha 0.35, 224 px, seeds 0-9), scored on the 150 test photos: see the
benchmarks page. The head rate, dropout, `unfreeze` and the schedules (`lr_decay`, `warmup`,
`cosine`) were re-checked by 5-fold cross-validation on flowers/train, the schedules also on
a held-out split of flowers-large/train (`benchmarks/bench_schedules.py`, 160 px): nothing
beat these, so they stay. The epoch caps, patience and the fine-tune rate were not
re-checked that way.
"""


@dataclass(frozen=True)
class PhasePlan:
    """What trains in one phase, on a given model.

    Attributes:
        phase: the phase's name (`"head"` or `"finetune"`).
        epochs: the most epochs the phase runs (early stopping may end it sooner).
        learning_rate: learning rate of the phase's optimizer.
        trainable_params: parameters that train.
        frozen_params: parameters that do not.
        trainable_blocks: blocks of the base that train (empty in the head phase).
        batchnorm: BatchNormalization mode in the base.
        early_stopping: whether early stopping (best weights kept) watches the phase.
        spec: the `Phase` itself.
        block_rates: with `lr_decay`, the rate of each trainable block (top block last);
            empty when every trainable weight has the phase's rate.
    """

    phase: str
    epochs: int
    learning_rate: float
    trainable_params: int
    frozen_params: int
    trainable_blocks: tuple[str, ...]
    batchnorm: str
    early_stopping: bool
    spec: Phase
    block_rates: tuple[tuple[str, float], ...] = ()

    @property
    def schedule(self) -> str:
        """The rate over time in words: `"constant"`, `"warmup 1, cosine"`, ..."""
        parts = [f"warmup {self.spec.warmup:g}"] if self.spec.warmup else []
        parts += ["cosine"] if self.spec.cosine else []
        return ", ".join(parts) or "constant"


class Plan(tuple[PhasePlan, ...]):
    """The phases of a fit on a model; `str(plan)` is a readable table."""

    def __str__(self) -> str:
        rows = [("phase", "epochs", "lr", "trainable", "frozen", "blocks trained", "BN", "stops")]
        timed = any(p.schedule != "constant" for p in self)
        for p in self:
            blocks = ", ".join(p.trainable_blocks) or "- (head only)"
            rate = "find" if math.isnan(p.learning_rate) else f"{p.learning_rate:g}"
            if p.spec.lr_decay is not None and p.block_rates:
                rate += f" (blocks x{p.spec.lr_decay:g}^k)"
            if timed:
                rate += f" [{p.schedule}]"
            rows.append(
                (
                    p.phase,
                    str(p.epochs),
                    rate,
                    f"{p.trainable_params:,}",
                    f"{p.frozen_params:,}",
                    blocks,
                    p.batchnorm,
                    "early" if p.early_stopping else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )


def plan(model: keras.Model, phases: Sequence[Phase]) -> Plan:
    """Describes `phases` on `model`; leaves what is trainable as it was.

    Args:
        model: a full model (base nested in it, with its head).
        phases: e.g. `recipe.phases()`.

    Returns:
        A `Plan`, one `PhasePlan` per phase.

    Raises:
        ConfigError: a phase unfreezes more blocks (or layers) than the base has.
    """
    from finetunekit import freezing, schedules  # TensorFlow, only when a model is described

    rows = []
    with freezing.restoring(model):
        for phase in phases:
            freezing.set_trainable(model, phase.unfreeze, unit=phase.unit, train_bn=phase.train_bn)
            report = freezing.trainable_report(model)
            rows.append(
                PhasePlan(
                    phase=phase.name,
                    epochs=phase.epochs,
                    learning_rate=phase.learning_rate,
                    trainable_params=report.trainable_params,
                    frozen_params=report.frozen_params,
                    trainable_blocks=report.trainable_blocks,
                    batchnorm=report.batchnorm,
                    early_stopping=phase.early_stopping,
                    spec=phase,
                    block_rates=schedules.block_rates(model, phase),
                )
            )
    return Plan(rows)

