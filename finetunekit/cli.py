"""The `finetunekit` command: `train`, `rank`, `bases`, `demo`.

```
finetunekit train flowers/ --base mobilenet_v2 --weights imagenet --out flowers.keras
finetunekit rank flowers/ --candidate mobilenet_v2 --candidate efficientnet_b0
finetunekit bases "efficientnet*"
finetunekit demo
```

Every error finetunekit raises (and every usage error) prints one line,
`finetunekit: error: ...`, and exits non-zero without a traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from finetunekit._defaults import DEFAULTS as D
from finetunekit._version import __version__

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


def _add_base_arguments(parser: argparse.ArgumentParser, *, base_default: str) -> None:
    parser.add_argument(
        "--base",
        default=base_default,
        help=f"base name (see 'finetunekit bases') or a .keras file (default {base_default})",
    )
    parser.add_argument(
        "--weights",
        type=_weights,
        default="imagenet",
        help="'imagenet' (Keras download or cache), a weights file path, or 'none' "
        "(default imagenet)",
    )
    _add_size_arguments(parser, whose="the base's")
    parser.add_argument(
        "--base-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another keyword argument of the Keras constructor (repeatable)",
    )


def _add_size_arguments(parser: argparse.ArgumentParser, *, whose: str) -> None:
    parser.add_argument(
        "--image-size",
        type=_positive,
        metavar="PX",
        help=f"resize images to PX x PX (default: {whose} native size)",
    )
    parser.add_argument("--alpha", type=float, help="width multiplier of MobileNet bases")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `finetunekit` command."""
    parser = _Parser(
        prog=PROG,
        description="Fine-tune pretrained Keras image models: load a base, freeze, add a head, "
        "train, unfreeze, train.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors besides the result"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="fine-tune a base on a folder of images (one subfolder per class)",
        description="Fine-tune a base on DATA_DIR (one subfolder of images per class): head "
        "phase with the base frozen, then the last blocks unfrozen, early stopping on a "
        "validation split, and the model saved as a .keras file that takes raw pixels.",
    )
    train.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder per class")
    _add_base_arguments(train, base_default="mobilenet_v2")
    # Options whose defaults are the library's (finetunekit.finetuner.DEFAULTS).
    for flag, kind, key, metavar, what in (
        ("--head-epochs", _count, "head_epochs", "N", "most epochs with the base frozen"),
        ("--finetune-epochs", _count, "finetune_epochs", "N", "most epochs after unfreezing"),
        ("--unfreeze", _count, "unfreeze", "N", "blocks to unfreeze"),
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
    ):
        default = getattr(D, key)
        train.add_argument(
            flag, type=kind, default=default, metavar=metavar, help=f"{what} (default {default:g})"
        )
    train.add_argument(
        "--unit", choices=("block", "layer"), default="block", help="what --unfreeze counts"
    )
    train.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    train.add_argument(
        "--on-bad-image",
        choices=("raise", "skip"),
        default="raise",
        help="what to do with unreadable image files (default raise)",
    )
    train.add_argument("--seed", type=int, default=0, help="seed of shuffles and split")
    train.add_argument(
        "--out", default="model.keras", metavar="PATH", help="where to save (default model.keras)"
    )
    train.set_defaults(handler=_train)

    _add_rank_parser(commands)

    bases = commands.add_parser(
        "bases",
        help="list the known base names",
        description="List the base names 'train --base' accepts.",
    )
    bases.add_argument(
        "pattern", nargs="?", metavar="PATTERN", help="glob such as 'mobilenet*' (quote it)"
    )
    bases.set_defaults(handler=_bases)

    demo = commands.add_parser(
        "demo",
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
        help="where the plot and the pretrained base go (default ./finetunekit-demo)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--data", metavar="DIR", help="a folder of real images, one subfolder per class"
    )
    demo.add_argument("--test", metavar="DIR", help="a test folder with the same classes as --data")
    _add_base_arguments(demo, base_default="mobilenet_v2")
    demo.add_argument("--head-epochs", type=_count, default=5, metavar="N", help="with --data")
    demo.add_argument("--finetune-epochs", type=_count, default=5, metavar="N", help="with --data")
    demo.add_argument(
        "--progress",
        action="store_true",
        help="show Keras progress bars and finetunekit's log for every run",
    )
    demo.set_defaults(handler=_demo)
    return parser


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
    rank.add_argument("--seed", type=int, default=0, help="seed of the subset and intervals")
    rank.add_argument("--plot", metavar="PATH", help="also save a bar chart (needs matplotlib)")
    rank.set_defaults(handler=_rank)


def _rank(args: argparse.Namespace) -> int:
    from finetunekit.errors import ConfigError
    from finetunekit.selection import rank_bases

    if not Path(args.data_dir).exists():
        raise _not_found("DATA_DIR", args.data_dir)
    candidates = {label: name for label, name, _ in args.candidate}
    if len(candidates) < len(args.candidate):
        raise ConfigError("the same --candidate is given twice; give each once.")
    size = args.image_size
    ranking = rank_bases(
        args.data_dir,
        candidates,
        weights={label: weights for label, _, weights in args.candidate},
        input_shape=None if size is None else (size, size, 3),
        max_images=args.max_images,
        seed=args.seed,
        **({} if args.alpha is None else {"alpha": args.alpha}),
    )
    print(ranking)
    if args.plot:
        print(f"plot: {ranking.plot(args.plot)}")
    return 0


def _base_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(args.base_arg)
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    return kwargs


@contextlib.contextmanager
def _logging_to_stderr(quiet: bool) -> Iterator[None]:
    """Shows finetunekit's log lines (INFO, or WARNING with --quiet) while a command runs."""
    logger = logging.getLogger("finetunekit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _train(args: argparse.Namespace) -> int:
    from finetunekit.data import from_directory
    from finetunekit.finetuner import FineTuner

    size = args.image_size
    tuner = FineTuner(
        args.base,
        weights=args.weights,
        input_shape=None if size is None else (size, size, 3),
        **_base_kwargs(args),
    )
    split = args.validation_split or None
    train, validation, class_names = from_directory(
        args.data_dir,
        image_size=size,
        batch_size=args.batch_size,
        validation_split=split,
        seed=args.seed,
        base=tuner,
        on_bad_image=args.on_bad_image,
    )
    tuner.num_classes = len(class_names)
    history = tuner.fit(
        train,
        validation_data=validation,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze=args.unfreeze,
        unit=args.unit,
        head_learning_rate=args.head_lr,
        finetune_learning_rate=args.finetune_lr,
        patience=args.patience,
        verbose=0 if args.quiet else "auto",
    )
    saved = tuner.save(args.out)
    print(_summary(history, class_names, train, validation, args, saved))
    return 0


def _summary(
    history: Any,
    class_names: Sequence[str],
    train: Any,
    validation: Any,
    args: argparse.Namespace,
    saved: Path,
) -> str:
    phases = list(history.phases)
    counts = [
        f"{phase} {phases.count(phase)} of {limit}"
        for phase, limit in (("head", args.head_epochs), ("finetune", args.finetune_epochs))
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
    return int(args.head_epochs) + (int(args.finetune_epochs) if args.unfreeze else 0)


def _bases(args: argparse.Namespace) -> int:
    from finetunekit.bases import list_bases
    from finetunekit.errors import ConfigError

    names = list_bases(args.pattern)
    if not names:
        raise ConfigError(
            f"no base matches {args.pattern!r}; run 'finetunekit bases' to list them all."
        )
    print("\n".join(names))
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
    from finetunekit.errors import FinetuneKitError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        # The demo prints its own progress; its INFO lines only with --progress.
        quiet = args.quiet or (args.command == "demo" and not args.progress)
        with _logging_to_stderr(quiet):
            return int(args.handler(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except FinetuneKitError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except OSError as exc:  # e.g. --out in a folder that cannot be written
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int) -> int:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
