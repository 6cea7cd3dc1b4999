"""The `finetunekit` command: `train`, `rank`, `predict`, `evaluate`, `export`,
`bases`, `demo`.

```
finetunekit train flowers/ --base mobilenet_v2 --weights imagenet --out flowers.keras
finetunekit predict flowers.keras photos/ --top 2 --csv predictions.csv
finetunekit evaluate flowers.keras flowers/test --plots plots/
finetunekit export flowers.keras flowers.tflite --quantize int8 --calibration flowers/train
finetunekit rank flowers/ --candidate mobilenet_v2 --candidate efficientnet_b0
finetunekit bases "efficientnet*"
finetunekit demo
```

Every error finetunekit raises (and every usage error) prints one line,
`finetunekit: error: ...`, and exits non-zero without a traceback. The library's
messages name Python arguments (`weights=PATH`); the command says its flags instead
(`--weights PATH`). TensorFlow is imported only by the commands that need it, with its
C++ start-up lines kept off the terminal unless `--verbose`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from finetunekit._version import __version__
from finetunekit.recipe import DEFAULTS as D

__all__ = ["main", "build_parser"]

PROG = "finetunekit"
#: Exit status of a run that failed on its input (bad data, weights, arguments).
EXIT_ERROR = 1
#: Exit status of a command line argparse cannot parse.
EXIT_USAGE = 2


class _UsageError(Exception):
    """Raised instead of argparse's exit, so `main` prints one line and returns."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; options without one say in their help what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. alpha=0.35; received {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word stays a string
    return key, value


def _weights(text: str) -> str | None:
    return None if text.lower() in ("none", "random") else text


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, e.g. 0; received {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer; received {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; received {text!r}")
    return value


def _views(text: str) -> int | str:
    """`--augment-views 4`, or `auto`."""
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto'; received {text!r}"
        ) from None


def _stages(text: str) -> int | tuple[int, ...]:
    """`--unfreeze 2` or, unfreezing gradually, `--unfreeze 1,2,4`."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0 or increasing integers such as 1,2,4; received {text!r}"
        ) from None
    if len(values) == 1:
        return _count(parts[0])
    if any(v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise argparse.ArgumentTypeError(
            f"expected increasing positive integers such as 1,2,4; received {text!r}"
        )
    return tuple(values)


def _add_base_arguments(parser: argparse.ArgumentParser, *, base_default: str) -> None:
    parser.add_argument(
        "--base",
        default=base_default,
        help="base name (see 'finetunekit bases') or a .keras file",
    )
    parser.add_argument(
        "--weights",
        type=_weights,
        default="imagenet",
        help="'imagenet' (Keras download or cache), a weights file path, or 'none'",
    )
    _add_size_arguments(parser, whose="the base's")
    parser.add_argument(
        "--base-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another keyword argument of the Keras constructor (repeatable; default: none)",
    )


def _add_size_arguments(parser: argparse.ArgumentParser, *, whose: str) -> None:
    parser.add_argument(
        "--image-size",
        type=_positive,
        metavar="PX",
        help=f"resize images to PX x PX (default: {whose} native size)",
    )
    parser.add_argument(
        "--alpha", type=float, help="width multiplier of MobileNet bases (default: Keras' 1.0)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `finetunekit` command."""
    parser = _Parser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description="Fine-tune pretrained Keras image models: load a base, freeze, add a head, "
        "train, unfreeze, train.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors besides the result"
    )
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        formatter_class=_HelpFormatter,
        help="fine-tune a base on a folder of images (one subfolder per class)",
        description="Fine-tune a base on DATA_DIR (one subfolder of images per class): head "
        "phase with the base frozen, then the last blocks unfrozen, early stopping on a "
        "validation split, and the model saved as a .keras file that takes raw pixels.",
    )
    train.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder per class")
    _add_base_arguments(train, base_default="mobilenet_v2")
    # Options whose defaults are the library's (finetunekit.DEFAULTS, a Recipe).
    for flag, kind, key, metavar, what in (
        ("--head-epochs", _count, "head_epochs", "N", "most epochs with the base frozen"),
        ("--finetune-epochs", _count, "finetune_epochs", "N", "most epochs after unfreezing"),
        (
            "--unfreeze",
            _stages,
            "unfreeze",
            "N",
            "blocks to unfreeze; increasing counts such as 1,2,4 unfreeze gradually (one "
            "fine-tune phase of --finetune-epochs per count)",
        ),
        (
            "--validation-split",
            float,
            "validation_split",
            "F",
            "fraction held out for validation and early stopping; 0 for none",
        ),
        ("--head-lr", float, "head_learning_rate", "LR", "learning rate of the head phase"),
        ("--finetune-lr", float, "finetune_learning_rate", "LR", "learning rate after unfreezing"),
        ("--patience", _positive, "patience", "N", "epochs without improvement before stopping"),
        (
            "--lr-decay",
            float,
            "lr_decay",
            "D",
            "per-block rates after unfreezing: the k-th block from the top trains at "
            "the rate times D**k (default: one rate)",
        ),
        (
            "--warmup",
            float,
            "warmup",
            "W",
            "linear warm-up at the start of each phase: epochs, or a fraction below 1 of it",
        ),
    ):
        default = getattr(D, key)
        train.add_argument(flag, type=kind, default=default, metavar=metavar, help=what)
    train.add_argument(
        "--cosine", action="store_true", help="the rate of each phase decays along a cosine to 0"
    )
    train.add_argument(
        "--find-lr",
        action="store_true",
        help="sweep the head's learning rate first (finetunekit.find_lr) and train at its "
        "suggestion instead of --head-lr",
    )
    train.add_argument(
        "--augment",
        choices=("none", "light", "default", "strong"),
        default="none",
        help="random flips, rotations and zooms of the training images (finetunekit.data."
        "augmentation presets); validation images are never augmented",
    )
    train.add_argument(
        "--augment-views",
        type=_views,
        default=D.augment_views,
        metavar="K",
        help="with --augment and cached phases: augmented views of each image stored (the "
        "frozen layers run once per view), or 'auto'",
    )
    train.add_argument(
        "--unit", choices=("block", "layer"), default="block", help="what --unfreeze counts"
    )
    train.add_argument(
        "--batch-size", type=_positive, default=32, metavar="N", help="images per training step"
    )
    train.add_argument(
        "--on-bad-image",
        choices=("raise", "skip"),
        default="raise",
        help="what to do with unreadable image files",
    )
    train.add_argument("--seed", type=_seed, default=0, help="seed of shuffles and split")
    train.add_argument(
        "--out",
        default="model.keras",
        metavar="PATH",
        help="where to save: a .keras file in a writable folder (checked before training)",
    )
    train.add_argument(
        "--plots",
        metavar="DIR",
        help="also write history.png and, with a validation split, the validation report's "
        "confusion.png and top_losses.png into DIR (needs matplotlib; default: no plots)",
    )
    train.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="checkpoint the run in DIR after every epoch; the same command again resumes "
        "it after its last finished epoch (or, when it had finished, saves its result "
        "without training); default: no checkpoints",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="resume the run in --checkpoint-dir; fails when DIR holds no checkpoint "
        "(never starts afresh)",
    )
    _add_verbose(train)
    train.set_defaults(handler=_train)

    _add_rank_parser(commands)

    bases = commands.add_parser(
        "bases",
        formatter_class=_HelpFormatter,
        help="list the known base names",
        description="List the base names 'train --base' accepts; with --details, what an "
        "offline user needs to know about each.",
    )
    bases.add_argument(
        "pattern",
        nargs="?",
        metavar="PATTERN",
        help="glob such as 'mobilenet*' (quote it; default: every base)",
    )
    bases.add_argument(
        "--details",
        action="store_true",
        help="native size, parameter count, preprocessing and the ImageNet weight file Keras "
        "looks for in ~/.keras/models (builds each base with random weights: a second or more "
        "per base, no download)",
    )
    bases.add_argument(
        "--alpha",
        type=float,
        help="with --details: the width multiplier of MobileNet bases (default: Keras' 1.0)",
    )
    _add_verbose(bases)
    bases.set_defaults(handler=_bases)

    demo = commands.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="offline comparison of fine-tuning and training from scratch",
        description="Pretrain a small CNN on generated shapes, fine-tune it on other shapes "
        "with few labels, and compare with training from scratch (about a minute on a CPU). "
        "With --data DIR it runs on a folder of real images and a Keras base instead.",
    )
    demo.add_argument("--quick", action="store_true", help="smaller and faster (for tests)")
    demo.add_argument(
        "--out",
        default="finetunekit-demo",
        metavar="DIR",
        help="where the plot and the pretrained base go",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="seed of data, weights and shuffles")
    demo.add_argument(
        "--data",
        metavar="DIR",
        help="a folder of real images, one subfolder per class (default: generated shapes)",
    )
    demo.add_argument(
        "--test",
        metavar="DIR",
        help="a test folder with the same classes as --data (default: a split of --data)",
    )
    _add_base_arguments(demo, base_default="mobilenet_v2")
    demo.add_argument(
        "--head-epochs", type=_count, default=5, metavar="N", help="with --data: head epochs"
    )
    demo.add_argument(
        "--finetune-epochs",
        type=_count,
        default=5,
        metavar="N",
        help="with --data: epochs after unfreezing",
    )
    demo.add_argument(
        "--scratch-seconds",
        type=float,
        metavar="S",
        help="time limit of the from-scratch run (default: with --data, the time the full "
        "fine-tune took; otherwise none, its epochs bound it)",
    )
    demo.add_argument(
        "--progress",
        action="store_true",
        help="show Keras progress bars and finetunekit's log for every run",
    )
    _add_verbose(demo)
    demo.set_defaults(handler=_demo)
    _add_model_commands(commands)
    return parser


_VERBOSE_HELP = "also show TensorFlow's own start-up and C++ log lines"


def _add_verbose(command: argparse.ArgumentParser) -> None:
    # Accepted after the command too; SUPPRESS keeps the top-level value when absent.
    command.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
    )


def _add_model_commands(commands: Any) -> None:
    """`predict`, `evaluate` and `export`: using a saved model."""
    predict = commands.add_parser(
        "predict",
        help="predict the classes of images with a saved model",
        description="Predict the classes of image files or of every image in a folder "
        "(read recursively) with a .keras model; images are resized to the model's input.",
    )
    predict.add_argument("model", metavar="MODEL", help="a .keras file")
    predict.add_argument(
        "images", metavar="IMAGES", nargs="+", help="image files, or a folder of images"
    )
    predict.add_argument(
        "--top", type=_positive, default=1, metavar="K", help="classes per image (default 1)"
    )
    predict.add_argument(
        "--threshold", type=float, default=0.5, metavar="P",
        help="multilabel models: the probability from which a label counts as present "
        "(default 0.5)",
    )
    predict.add_argument("--csv", metavar="OUT", help="also write the predictions to a CSV file")
    predict.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="per-class scores and confusion matrix of a saved model on a labelled folder",
        description="Evaluate a .keras model on FOLDER (one subfolder of images per class): "
        "accuracy, per-class precision, recall and F1, the confusion matrix and the images "
        "with the highest loss.",
    )
    evaluate.add_argument("model", metavar="MODEL", help="a .keras file")
    evaluate.add_argument("folder", metavar="FOLDER", help="folder with one subfolder per class")
    evaluate.add_argument(
        "--plots", metavar="DIR", help="write confusion.png and top_losses.png into DIR"
    )
    evaluate.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser(
        "export",
        help="export a saved model to LiteRT (.tflite) or a SavedModel, checked against Keras",
        description="Export a .keras model for inference outside Keras and report the file "
        "size and how well the export agrees with the Keras model on real images.",
    )
    export.add_argument("model", metavar="MODEL", help="a .keras file")
    export.add_argument("out", metavar="OUT", help="a .tflite file, or a SavedModel folder")
    export.add_argument(
        "--format", choices=("litert", "saved_model"), default="litert", help="(default litert)"
    )
    export.add_argument(
        "--quantize",
        choices=("float16", "dynamic", "int8"),
        help="LiteRT quantization (default: float32)",
    )
    export.add_argument(
        "--calibration",
        metavar="FOLDER",
        help="real images to calibrate int8 (and to check the export against Keras)",
    )
    export.add_argument(
        "--check", metavar="FOLDER", help="images to check the export on (default: --calibration)"
    )
    export.add_argument(
        "--gptq",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int8: round the convolution kernels by GPTQ on the calibration images "
        "(default: on; --no-gptq rounds to nearest, as the converter does)",
    )
    export.add_argument(
        "--fit-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int8: fit the output layer to the int8 features of the calibration "
        "images (default: on)",
    )
    export.set_defaults(handler=_export)


def _predict(args: argparse.Namespace) -> int:
    from finetunekit._atomic import check_writable
    from finetunekit.classifier import load

    csv = Path(args.csv).expanduser() if args.csv else None
    if csv is not None:  # a folder or unwritable place named before the images are read
        check_writable(csv, "--csv")
    predictions = load(args.model).predict(
        args.images, top=args.top, threshold=args.threshold, batch_size=args.batch_size
    )
    print(predictions)
    if csv is not None:
        print(f"written: {predictions.to_csv(csv)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from finetunekit.evaluation import evaluate

    report = evaluate(args.model, args.folder, batch_size=args.batch_size)
    print(report)
    if args.plots:
        folder = Path(args.plots).expanduser()
        written = [report.plot_confusion(folder / "confusion.png")]
        written.append(report.plot_top_losses(folder / "top_losses.png"))
        print("written: " + ", ".join(str(p) for p in written))
    return 0


def _export(args: argparse.Namespace) -> int:
    from finetunekit.exporting import export

    report = export(
        args.model,
        args.out,
        format=args.format,
        quantize=args.quantize,
        representative_data=args.calibration,
        parity_data=args.check,
        gptq=args.gptq,
        fit_head=args.fit_head,
    )
    print(_in_flag_words(str(report), args))
    return 0


def _candidate(text: str) -> tuple[str, str, str | None]:
    """NAME[=WEIGHTS] -> (label, name, weights); the label is what the table shows."""
    name, sep, weights = text.partition("=")
    if not name or (sep and not weights):
        raise argparse.ArgumentTypeError(
            f"expected NAME or NAME=WEIGHTS, e.g. mobilenet_v2=none; received {text!r}"
        )
    label = Path(name).name  # a .keras path shows as its file name
    if not sep:
        return label, name, "imagenet"
    value = _weights(weights)
    shown = "random" if value is None else Path(weights).name
    return f"{label}={shown}", name, value


def _full_label(name: str, weights: str | None) -> str:
    return name if weights == "imagenet" else f"{name}={'random' if weights is None else weights}"


def _add_rank_parser(commands: Any) -> None:
    rank = commands.add_parser(
        "rank",
        help="rank pretrained bases on a folder of images before fine-tuning",
        description="Run each candidate base once, frozen, over DATA_DIR (one subfolder of "
        "images per class) and rank them by leave-one-out k-NN accuracy of their features, "
        "with LogME and a linear probe beside it (finetunekit.rank_bases).",
    )
    rank.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder per class")
    rank.add_argument(
        "--candidate",
        type=_candidate,
        action="append",
        required=True,
        metavar="NAME[=WEIGHTS]",
        help="a base name or .keras file, with 'imagenet' (default), a weights file or 'none' "
        "(repeat for every candidate)",
    )
    _add_size_arguments(rank, whose="each base's")
    rank.add_argument(
        "--max-images",
        type=_positive,
        default=2000,
        metavar="N",
        help="score at most N images (default 2000)",
    )
    rank.add_argument("--seed", type=_seed, default=0, help="seed of the subset and intervals")
    rank.add_argument("--plot", metavar="PATH", help="also save a bar chart (needs matplotlib)")
    rank.set_defaults(handler=_rank)


def _rank(args: argparse.Namespace) -> int:
    from finetunekit.errors import ConfigError
    from finetunekit.selection import rank_bases

    if not Path(args.data_dir).expanduser().exists():
        raise _not_found("DATA_DIR", args.data_dir)
    given = [(name, weights) for _, name, weights in args.candidate]
    if len(set(given)) < len(given):
        raise ConfigError("the same --candidate is given twice; give each once.")
    short = [label for label, _, _ in args.candidate]
    # Labels show file names; two files of one name in other folders (r1/m.keras and
    # r2/m.keras, or weights a/w.h5 and b/w.h5) show their paths as given.
    labels = [
        label if short.count(label) == 1 else _full_label(name, weights)
        for label, name, weights in args.candidate
    ]
    candidates = {label: name for label, (name, _) in zip(labels, given, strict=True)}
    size = args.image_size
    ranking = rank_bases(
        args.data_dir,
        candidates,
        weights={label: weights for label, (_, weights) in zip(labels, given, strict=True)},
        input_shape=None if size is None else (size, size, 3),
        max_images=args.max_images,
        seed=args.seed,
        **({} if args.alpha is None else {"alpha": args.alpha}),
    )
    print(ranking)
    if args.plot:
        print(f"plot: {ranking.plot(args.plot)}")
    return 0


#: Constructor arguments that have an option of their own.
_OWN_OPTION = {"weights": "--weights", "input_shape": "--image-size"}


def _base_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from finetunekit.errors import ConfigError

    kwargs = dict(args.base_arg)
    for key, option in _OWN_OPTION.items():
        if key in kwargs:
            raise ConfigError(
                f"--base-arg {key}=... is set by its own option: use {option} instead."
            )
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    return kwargs


@contextlib.contextmanager
def _logging_to_stderr(
    quiet: bool, args: argparse.Namespace | None = None
) -> Iterator[None]:
    """Shows finetunekit's log lines (INFO, or WARNING with --quiet) while a command runs.

    The lines are in the command's words, as its errors are (`_in_flag_words`): the
    library's "checkpoint_dir='runs/x'" reads "--checkpoint-dir 'runs/x'".
    """
    logger = logging.getLogger("finetunekit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_InFlagWords(f"{PROG}: %(message)s", args))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # absl, TensorFlow's logging, calls logging.basicConfig() at its first message when
    # the root logger has no handler (export's SavedModel step logs one): the handler it
    # adds printed each of our lines a second time. A root handler of our own leaves
    # basicConfig nothing to do; it prints other libraries' warnings, as Python's
    # last-resort handler would, and leaves our lines to the handler above.
    root = logging.getLogger()
    placeholder = None
    if not root.handlers:
        placeholder = logging.StreamHandler(sys.stderr)
        placeholder.setLevel(logging.WARNING)
        placeholder.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        placeholder.addFilter(lambda record: not record.name.startswith("finetunekit"))
        root.addHandler(placeholder)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if placeholder is not None:
            root.removeHandler(placeholder)


class _InFlagWords(logging.Formatter):
    """A formatter that rewrites the library's argument names as the command's flags."""

    def __init__(self, fmt: str, args: argparse.Namespace | None) -> None:
        super().__init__(fmt)
        self.args = args

    def format(self, record: logging.LogRecord) -> str:
        return _in_flag_words(super().format(record), self.args)


def _check_train_arguments(args: argparse.Namespace) -> None:
    """Checks what the library would only check after training (--out) or deep inside it."""
    from finetunekit.errors import ConfigError, DataNotFoundError, WeightsNotFoundError

    if not Path(args.data_dir).expanduser().is_dir():
        raise DataNotFoundError(
            f"No image folder at {args.data_dir!r}: DATA_DIR must be a folder with one "
            "subfolder of images per class."
        )
    _check_weights_path(args.weights, WeightsNotFoundError)
    if not 0 <= args.validation_split < 1:
        raise ConfigError(
            f"--validation-split must be in [0, 1), e.g. 0.2, or 0 for none; received "
            f"{args.validation_split:g}."
        )
    for flag, rate in (("--head-lr", args.head_lr), ("--finetune-lr", args.finetune_lr)):
        if not rate > 0:
            raise ConfigError(f"{flag} must be a positive number, e.g. 1e-3; received {rate:g}.")
    from finetunekit.recipe import Recipe

    Recipe(**{**_recipe_settings(args), "head_learning_rate": args.head_lr})  # --warmup, ...
    _check_out(args.out)
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir DIR: the folder of the run to resume.")


def _recipe_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fit settings the train command's options give."""
    return dict(
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze=args.unfreeze,
        unit=args.unit,
        head_learning_rate="find" if args.find_lr else args.head_lr,
        finetune_learning_rate=args.finetune_lr,
        patience=args.patience,
        lr_decay=args.lr_decay,
        warmup=args.warmup,
        cosine=args.cosine,
        augment_views=args.augment_views,
    )


def _check_weights_path(weights: str | None, error: type[Exception]) -> None:
    if weights is None or weights == "imagenet" or Path(weights).expanduser().is_file():
        return
    raise error(
        f"--weights {weights!r}: no such file. Pass a weights file path, 'imagenet' or 'none'."
    )


def _check_out(out: str) -> None:
    from finetunekit.errors import ConfigError

    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {out!r} is a folder; give a file name such as 'model.keras'.")
    if path.suffix != ".keras":
        raise ConfigError(
            f"--out {out!r}: the model is saved as a Keras 3 '.keras' file; use a name such as "
            f"{str(path.with_suffix('.keras'))!r}."
        )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {out!r}: no folder {str(folder)!r}; create it first.")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {out!r}: the folder {str(folder)!r} is not writable.")


def _train(args: argparse.Namespace) -> int:
    _check_train_arguments(args)
    from finetunekit.data import from_directory
    from finetunekit.finetuner import FineTuner

    size = args.image_size
    tuner = FineTuner(
        args.base,
        weights=args.weights,
        input_shape=None if size is None else (size, size, 3),
        seed=args.seed,  # the cached phases' shuffles too: a resumed run draws the same
        augment=None if args.augment == "none" else args.augment,
        **_base_kwargs(args),
    )
    split = args.validation_split or None
    train, validation, class_names = from_directory(
        args.data_dir,
        image_size=tuner.input_size,
        batch_size=args.batch_size,
        validation_split=split,
        seed=args.seed,
        on_bad_image=args.on_bad_image,
    )
    tuner.num_classes = len(class_names)
    # "0 for none": without it fit would hold out its own 20 % of the images.
    no_split: dict[str, Any] = {"validation_split": 0.0} if split is None else {}
    try:
        history = tuner.fit(
            train,
            validation_data=validation,
            **no_split,
            verbose=0 if args.quiet else "auto",
            **_recipe_settings(args),
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
        )
    except KeyboardInterrupt:
        _save_interrupted(tuner, Path(args.out).expanduser())
        raise
    saved = tuner.save(args.out)
    print(_summary(history, class_names, train, validation, args, saved))
    if args.plots:
        _train_plots(Path(args.plots).expanduser(), history, saved, validation)
    return 0


def _save_interrupted(tuner: Any, out: Path) -> None:
    """After a Ctrl-C: the model beside --out, not in its place.

    The fit has put the best weights so far back into the model; the process is about
    to exit, and with it what the epochs learned. A separate name keeps an unfinished
    model from passing for the finished one.
    """
    if tuner.model is None or tuner.history is None or not tuner.history.epoch:
        return
    path = out.with_name(f"{out.stem}.interrupted{out.suffix or '.keras'}")
    try:
        tuner.save(path)
    except Exception as exc:  # noqa: BLE001 - the interrupt is what the user must see
        logging.getLogger("finetunekit").warning(
            "could not save the interrupted model to %s: %s", path, exc
        )
        return
    done = len(tuner.history.epoch)
    logging.getLogger("finetunekit").warning(
        "saved the model as the interrupted fit left it (%d epoch%s finished) to %s; the "
        "run did not finish", done, "" if done == 1 else "s", path,
    )


def _train_plots(folder: Path, history: Any, saved: Path, validation: Any) -> None:
    """The history plot and, with a validation split, its evaluation, into `folder`."""
    from finetunekit.evaluation import evaluate

    written = [history.plot(folder / "history.png")]
    if validation is not None:
        report = evaluate(saved, validation)
        print(report)
        written += [
            report.plot_confusion(folder / "confusion.png"),
            report.plot_top_losses(folder / "top_losses.png"),
        ]
    print("written: " + ", ".join(str(p) for p in written))


def _summary(
    history: Any,
    class_names: Sequence[str],
    train: Any,
    validation: Any,
    args: argparse.Namespace,
    saved: Path,
) -> str:
    phases = list(history.phases)
    stages = len(args.unfreeze) if isinstance(args.unfreeze, tuple) else 1
    tuned = ["finetune"] if stages == 1 else [f"finetune-{i}" for i in range(1, stages + 1)]
    counts = [
        f"{phase} {phases.count(phase)} of {limit}"
        for phase, limit in (
            ("head", args.head_epochs),
            *((name, args.finetune_epochs) for name in tuned),
        )
    ]
    lines = [
        "",
        f"Trained {args.base} on {len(class_names)} classes ({', '.join(class_names)}): "
        f"{len(train.file_paths)} training"
        + (f", {len(validation.file_paths)} validation images." if validation else " images."),
        f"  epochs per phase: {', '.join(counts)}"
        + (" (early stopping ended a phase sooner)" if len(phases) < _planned(args) else ""),
    ]
    for key, label in (("accuracy", "training"), ("val_accuracy", "validation")):
        values = [v for v in history.history.get(key, []) if v == v]  # drop NaN
        if values:
            lines.append(f"  {label} accuracy: last epoch {values[-1]:.3f}, best {max(values):.3f}")
    lines.append(f"  saved: {saved} (reload with keras.models.load_model; it takes raw pixels)")
    return "\n".join(lines)


def _planned(args: argparse.Namespace) -> int:
    stages = len(args.unfreeze) if isinstance(args.unfreeze, tuple) else int(bool(args.unfreeze))
    return int(args.head_epochs) + int(args.finetune_epochs) * stages


def _bases(args: argparse.Namespace) -> int:
    from finetunekit.bases import describe_base, list_bases
    from finetunekit.errors import ConfigError

    names = list_bases(args.pattern)
    if not names:
        raise ConfigError(
            f"no base matches {args.pattern!r}; run 'finetunekit bases' to list them all."
        )
    if not args.details:
        print("\n".join(names))
        return 0
    kwargs = {} if args.alpha is None else {"alpha": args.alpha}
    row = "{:<22} {:>6} {:>12} {:<14} {}"
    print(row.format("name", "size", "parameters", "preprocessing", "ImageNet weight file"))
    for name in names:
        details = describe_base(name, **kwargs)
        print(
            row.format(
                details.name,
                details.default_size,
                f"{details.parameters:,}",
                details.preprocessing,
                details.weights_file,
            ),
            flush=True,
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from finetunekit.demo import run_demo

    kwargs = _base_kwargs(args)
    for flag, value in (("--data", args.data), ("--test", args.test)):
        if value is not None and not Path(value).exists():
            # from_directory says the same; checking here spares the imports.
            raise _not_found(flag, value)
    result = run_demo(
        quick=args.quick,
        out_dir=args.out,
        seed=args.seed,
        data=args.data,
        test_data=args.test,
        base=args.base,
        weights=args.weights,
        image_size=args.image_size,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        base_kwargs=kwargs or None,
        scratch_seconds=args.scratch_seconds,
        verbose=1 if args.progress else 0,
        echo=None if args.quiet else print,
    )
    print()
    print(result)
    return 0


def _not_found(flag: str, value: str) -> Exception:
    from finetunekit.errors import DataNotFoundError

    return DataNotFoundError(f"{flag} {value!r}: no such folder.")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `finetunekit` command.

    Args:
        argv: the arguments after the program name; `sys.argv[1:]` when None.

    Returns:
        The exit status: 0 on success, 1 when finetunekit rejected the input (the
        message is printed as one line on stderr), 2 for a command line that does not
        parse, 130 when interrupted.

    Examples:
        >>> main(["bases", "mobilenet*"])
        mobilenet
        mobilenet_v2
        mobilenet_v3_large
        mobilenet_v3_small
        0
    """
    from finetunekit._checks import check_backend
    from finetunekit.errors import FinetuneKitError

    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if "keras" not in sys.modules:  # this process is ours: Keras on TensorFlow
            os.environ["KERAS_BACKEND"] = "tensorflow"
        check_backend()
        _import_tensorflow(verbose=args.verbose)
        # The demo prints its own progress; its INFO lines only with --progress.
        quiet = args.quiet or (args.command == "demo" and not args.progress)
        with _logging_to_stderr(quiet, args):
            return int(args.handler(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except FinetuneKitError as exc:
        return _fail(_in_flag_words(str(exc), args), EXIT_ERROR)
    except OSError as exc:  # e.g. --out in a folder that cannot be written
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


# The library's messages name Python arguments; on the command line they are flags.
# Each row: a regular expression and what replaces it (most specific first).
_FLAG_WORDS: tuple[tuple[str, str], ...] = (
    (r"input_shape=\((\d+), \1, 3\)", r"--image-size \1"),
    (r"input_shape=\((\d+), (\d+), 3\)", r"images of \1x\2 pixels"),
    (r"weights=PATH", "--weights PATH"),
    (r"weights='imagenet'", "--weights imagenet"),
    (r"weights=None", "--weights none"),
    (r"(of )?the keyword arguments you passed to load_base", r"\1--alpha and --base-arg KEY=VALUE"),
    (r"\bload_base(\(\))? does not take (\w+)=", r"--base-arg does not take \2="),
    (r"\bsave\(\) writes", "--out must name"),
    (r"finetunekit\.list_bases\(\)", "'finetunekit bases'"),
    (r"\bon_bad_image='skip'", "--on-bad-image skip"),
    (r"\bimage_size=(\d+)", r"--image-size \1"),
    (r"\bbatch_size=(\d+)", r"--batch-size \1"),
    (r"\bvalidation_split=", "--validation-split "),
    (r"\bhead_learning_rate=", "--head-lr "),
    (r"\bfinetune_learning_rate=", "--finetune-lr "),
    (r"\bhead_epochs=", "--head-epochs "),
    (r"\bfinetune_epochs=", "--finetune-epochs "),
    (r"\bpatience=", "--patience "),
    (r"\blr_decay\b", "--lr-decay"),
    (r"\bwarmup=", "--warmup "),
    (r"\bwarmup < ", "--warmup < "),
    (r"\bwarmup must", "--warmup must"),
    (r"\balpha=", "--alpha "),
    (r"\bresume=True", "--resume"),
    (r"\bdrop resume\b", "drop --resume"),
    (r"\bthe same fit with checkpoint_dir=", "the same command with --checkpoint-dir "),
    (r"\bpass checkpoint_dir=\.\.\. to fit\b", "pass --checkpoint-dir DIR"),
    (r"\bcheckpoint_dir=", "--checkpoint-dir "),
    (r"\bcheckpoint_dir\b", "--checkpoint-dir"),
    (r"(--lr-decay must be) None or ", r"\1 "),
    (r"\bthreshold must\b", "--threshold must"),
    (r"\bn=(\d+) but the base", r"--unfreeze \1 but the base"),
    (r"\b([Uu]se) n <= (\d+)", r"\1 --unfreeze <= \2"),
    (r" \(see finetunekit\.structure\.blocks\(model\)\)", ""),
    (r", or freeze\(model\) then train the whole base", ""),
)
#: The recipe's fields that train sets by a flag of another name.
_FIELD_FLAGS = {
    "head_learning_rate": "--head-lr",
    "finetune_learning_rate": "--finetune-lr",
    **{
        field: "--" + field.replace("_", "-")
        for field in (
            "head_epochs", "finetune_epochs", "unfreeze", "unit", "patience", "lr_decay",
            "warmup", "cosine", "augment_views", "validation_split", "batch_size",
        )
    },
}
# A stored checkpoint's difference ("recipe.head_epochs: stored 3, asked 4") and a
# setting's own check ("finetune_learning_rate must be ...") name the flag.
_FLAG_WORDS += tuple(
    (rf"\b(?:recipe\.)?{field}(?=: stored| must\b)", flag) for field, flag in _FIELD_FLAGS.items()
)
# A MobileNet weight file's name carries its alpha: ..._tf_kernels_0.35_224_no_top.h5
_ALPHA_IN_NAME = re.compile(r"_(\d\.\d+)_\d+_no_top")


# `export` reads its images from --calibration and --check.
_EXPORT_WORDS: tuple[tuple[str, str], ...] = (
    (r"representative_data='([^']*)'", r"--calibration \1"),
    (r"\bquantize='(\w+)'", r"--quantize \1"),
    (r"\bpass representative_data or parity_data images", "pass --calibration or --check FOLDER"),
    (r"\bpass parity_data with other images", "pass --check FOLDER with other images"),
    (r"\brepresentative_data\b", "--calibration FOLDER"),
    (r"\bparity_data\b", "--check FOLDER"),
    (r"\bformat='(\w+)'", r"--format \1"),
)

# `rank` names each candidate's weights inside --candidate; it has no --weights.
_RANK_WORDS: tuple[tuple[str, str], ...] = (
    (r"weights=PATH", "--candidate NAME=PATH"),
    (r"weights='imagenet'", "--candidate NAME"),
    (r"weights=None", "--candidate NAME=none"),
)


def _in_flag_words(message: str, args: argparse.Namespace | None) -> str:
    """Rewrites a library message in the command's words, with a hint where one helps."""
    command = str(getattr(args, "command", None))
    own = {"rank": _RANK_WORDS, "export": _EXPORT_WORDS}.get(command, ())
    for pattern, flag in own:
        message = re.sub(pattern, flag, message)
    for pattern, flag in _FLAG_WORDS:
        message = re.sub(pattern, flag, message)
    weights = getattr(args, "weights", None)
    if weights and getattr(args, "alpha", None) is None and "do not fit" in message:
        match = _ALPHA_IN_NAME.search(Path(weights).name)
        if match:
            message += f" The file name says alpha {match.group(1)}: pass --alpha {match.group(1)}."
    return message


def _import_tensorflow(verbose: bool) -> None:
    """Imports TensorFlow with its C++ start-up lines kept off the terminal (unless verbose).

    TensorFlow 2.21 prints oneDNN, CUDA and CPU-feature lines and an absl banner while it
    loads, before TF_CPP_MIN_LOG_LEVEL takes effect, so stderr's file descriptor is sent
    to /dev/null around the import alone. Python warnings raised meanwhile are replayed.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # later C++ lines (cuInit, ...)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to silence
        saved = -1
    devnull = os.open(os.devnull, os.O_WRONLY)
    with warnings.catch_warnings(record=True) as caught:
        try:
            if saved >= 0:
                os.dup2(devnull, 2)
            import keras  # noqa: F401  (imports tensorflow)
        finally:
            if saved >= 0:
                os.dup2(saved, 2)
                os.close(saved)
            os.close(devnull)
    for item in caught:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _fail(message: str, status: int) -> int:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
