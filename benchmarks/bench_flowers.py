"""Fine-tuning recipes side by side on the flowers photos, in one process.

Runs, on ../shared/data/flowers with the real MobileNetV2-alpha0.35 ImageNet weights:

- seed:        the seed document's recipe (flat head on base.output, every base layer
               frozen by a loop, `model.layers[-4:]` unfrozen), with `preprocess_input` added;
- keras-guide: the Keras transfer-learning guide's recipe (base called with
               training=False, last 20 base layers unfrozen with BatchNormalization frozen,
               Adam 1e-5);
- finetunekit: the call a user makes, `FineTuner(...).fit(train, head_epochs=5,
               finetune_epochs=5)`, everything else at its default (caching "auto",
               early stopping on its held-out split, default verbosity); beside it,
               labelled, the same with a CSVLogger callback, with early_stopping=False,
               a tuned variant (early_stopping=False, verbose=0) and cache=False;
- floor:       loading the base, one forward pass of the frozen layers (both phases'
               inputs at once) and the training of the unfrozen parts on stored arrays
               (caching.fit_on_features), with no validation and nothing printed;
- defaults:    `FineTuner("mobilenet_v2", num_classes=5, weights=..., alpha=0.35).fit(train)`
               at the base's own 224 px, nothing else given (with --defaults).

For each it prints the wall time of the fine-tuning (from loading the base to the trained
model), the peak extra resident memory during it, and the test accuracy, measured after the
clock stops: evaluating the 150 test images is the same work for every recipe and is not
part of any recipe.

    python benchmarks/bench_flowers.py                 # 160 px, 5 + 5 epochs
    python benchmarks/bench_flowers.py --defaults      # also the no-argument run at 224 px
    python benchmarks/bench_flowers.py --runs 3        # medians of 3 runs of every recipe
    python benchmarks/bench_flowers.py --data large    # flowers-large/train, about 2,000 photos
    python benchmarks/bench_flowers.py --views 1 2 4 8 16   # augment_views side by side
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetunekit as ftk  # noqa: E402
from finetunekit import caching  # noqa: E402
from finetunekit.recipe import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
FLOWERS = DATA / "flowers"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples resident memory in a thread; `.peak` is the most above the start."""

    def __init__(self) -> None:
        self.start = rss_bytes()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.start)
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load(
    size: int, seed: int = 0, folder: Path | None = None
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    train = keras.utils.image_dataset_from_directory(
        folder or FLOWERS / "train", image_size=(size, size), batch_size=32, seed=seed,
        verbose=False,
    )
    test = keras.utils.image_dataset_from_directory(
        FLOWERS / "test", image_size=(size, size), batch_size=32, shuffle=False, verbose=False
    )
    return train, test


def accuracy(
    model: keras.Model, test: tf.data.Dataset, preprocess: Callable[..., Any] | None
) -> float:
    images = test.map(lambda x, y: preprocess(x) if preprocess is not None else x)
    labels = np.concatenate([y.numpy() for _, y in test])
    pred = np.argmax(model.predict(images, verbose=0), axis=-1)
    return float(np.mean(pred == labels))


def mobilenet(size: int) -> keras.Model:
    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=0.35, include_top=False, weights=str(WEIGHTS)
    )


#: A trained model, and the preprocessing its test images need first (None: in the model).
Trained = tuple[keras.Model, Callable[..., Any] | None]


def seed_recipe(train: tf.data.Dataset, size: int, epochs: tuple[int, int]) -> Trained:
    def pre(x: tf.Tensor) -> tf.Tensor:
        # keras.applications.mobilenet_v2.preprocess_input ("tf" mode), written out because
        # the Keras function does not trace inside tf.data.Dataset.map.
        return x / 127.5 - 1.0

    train_p = train.map(lambda x, y: (pre(x), y))
    base = mobilenet(size)
    for layer in base.layers:  # step 2
        layer.trainable = False
    x = keras.layers.GlobalAveragePooling2D()(base.output)  # step 3
    x = keras.layers.Dense(1024, activation="relu")(x)
    out = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(base.input, out)
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )  # step 4
    model.fit(train_p, epochs=epochs[0], verbose=0)  # step 5
    for layer in model.layers[-4:]:  # step 6
        layer.trainable = True
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train_p, epochs=sum(epochs), initial_epoch=epochs[0], verbose=0)
    return model, pre


def keras_guide_recipe(
    train: tf.data.Dataset,
    size: int,
    epochs: tuple[int, int],
    augment: str | None = None,
    autotune: bool = True,
) -> Trained:
    """The guide's recipe; with `augment="keras"`, Keras' own RandomFlip, RandomRotation and
    RandomZoom at the amounts of FineTuner's "default" preset in front of the base inside
    the model, as the guide puts its RandomFlip and RandomRotation (`keras_augmentation`);
    with `augment="finetunekit"` (a labelled variant), the preset's own layer, which draws
    the same transforms and applies them as one. `autotune=False` (a labelled variant)
    reads the data without tf.data's autotuning, as `FineTuner.fit` does: deleting an
    autotuned iterator (Keras makes one an epoch) can wait seconds."""
    if not autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        train = train.with_options(options)
    base = mobilenet(size)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    if augment == "keras":
        x = keras_augmentation()(inputs)
    elif augment == "finetunekit":
        x = ftk.data.augmentation("default")(inputs)
    else:
        x = inputs
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # mobilenet_v2 preprocessing
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs[0], verbose=0)
    base.trainable = True
    for layer in base.layers[:-20]:
        layer.trainable = False
    for layer in base.layers[-20:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train, epochs=sum(epochs), initial_epoch=epochs[0], verbose=0)
    return model, None


def keras_augmentation() -> keras.Sequential:
    """What a user of the Keras guide writes for FineTuner's "default" preset: Keras' three
    random layers at its amounts (flips, rotations up to 0.05 of a turn, zoom up to 10%).
    The preset was exactly these layers until it drew them as one transform."""
    amounts = ftk.data.AUGMENTATION_PRESETS["default"]
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(amounts["rotation"]),
            keras.layers.RandomZoom(amounts["zoom"]),
        ],
        name="augmentation",
    )


def finetunekit_recipe(
    train: tf.data.Dataset, size: int, epochs: tuple[int, int], **options: Any
) -> Trained:
    """The call a user makes: `FineTuner(...).fit(train, head_epochs=5, finetune_epochs=5)`.

    Everything else at its default: caching "auto", early stopping on its 20% content
    split, Keras' default verbosity (the bars go to a buffer, see `quiet_stdout`).
    `options` go to the constructor (`cache=`) or to fit (the labelled variants).
    """
    constructor = {
        k: options.pop(k) for k in ("cache", "augment", "cache_budget") if k in options
    }
    tuner = ftk.FineTuner(
        "mobilenet_v2",
        num_classes=5,
        weights=WEIGHTS,
        input_shape=(size, size, 3),
        alpha=0.35,
        seed=0,
        **constructor,
    )
    with quiet_stdout():
        history = tuner.fit(train, head_epochs=epochs[0], finetune_epochs=epochs[1], **options)
    HEAD_SECONDS.append(history.reports[0].seconds)
    return tuner.model, None


#: The head phase's seconds (its share of the feature pass included) of every FineTuner run.
HEAD_SECONDS: list[float] = []


def quiet_stdout() -> contextlib.AbstractContextManager[Any]:
    """Progress bars printed as usual, into a buffer instead of this script's table."""
    return contextlib.redirect_stdout(io.StringIO())


def floor(train: tf.data.Dataset, size: int, epochs: tuple[int, int]) -> Trained:
    """The work no recipe can skip, on the library's own pieces.

    Load the base; ONE forward pass of the frozen layers over the images, giving both
    phases' inputs (the pooled features, and the feature maps below the 2 unfrozen
    blocks); then train each phase's unfrozen part on the stored arrays (reshuffled
    every epoch) with `caching.fit_on_features`, the optimizer built before the step is
    traced. No early stopping, no validation, nothing printed. Same head and learning
    rates as FineTuner's defaults.
    """
    base = ftk.load_base("mobilenet_v2", weights=WEIGHTS, input_shape=(size, size, 3), alpha=0.35)
    ftk.freeze(base)
    model = ftk.add_head(base, 5, dropout=DEFAULTS.dropout, normalize=True)
    head = caching.split_frozen_prefix(model)
    ftk.unfreeze_last(model, DEFAULTS.unfreeze, unit="block")
    tune = caching.split_frozen_prefix(model)
    assert head is not None and tune is not None
    with caching.FeatureCache(caching.joint_prefix(head, tune), train) as cache:
        rates = (DEFAULTS.head_learning_rate, DEFAULTS.finetune_learning_rate)
        for output, (split, rate, n) in enumerate(zip((head, tune), rates, epochs, strict=True)):
            ftk.freeze(model)
            if output:
                ftk.unfreeze_last(model, DEFAULTS.unfreeze, unit="block")
            ftk.compile_for(split.trainer, learning_rate=rate)
            split.trainer.optimizer.build(split.trainer.trainable_variables)
            batches = cache.dataset(shuffle=True, seed=0, output=output, part="all")
            caching.fit_on_features(split.trainer, batches, epochs=n, verbose=0)
    return model, None


def defaults_run(train: tf.data.Dataset, **constructor: Any) -> Trained:
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=5, weights=WEIGHTS, alpha=0.35, **constructor
    )
    with quiet_stdout():
        tuner.fit(train)
    return tuner.model, None


def warm_up(train: tf.data.Dataset, size: int) -> None:
    """Pays the process's first-use costs before any clock starts.

    The first forward passes in a process run slower: the memory allocator returns big
    activation buffers to the system and faults them in again until its thresholds have
    grown (here the first MobileNetV2 pass over the images took 2.6 s, later ones 1.6 s).
    Without this, whichever recipe happened to run first paid it. It also warms tf.data
    and the JPEG decoder.
    """
    model = mobilenet(size)
    model.predict(train.map(lambda x, y: x), verbose=0)
    del model
    keras.backend.clear_session()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument(
        "--data",
        choices=("small", "large"),
        default="small",
        help="small: flowers/train (350 photos); large: flowers-large/train (about 2,000)",
    )
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--defaults", action="store_true", help="also the no-argument run")
    parser.add_argument("--only", nargs="*", help="run only these recipes")
    parser.add_argument(
        "--views",
        type=int,
        nargs="*",
        default=[],
        help="also augment='default' with augment_views=K for each K given",
    )
    parser.add_argument(
        "--spill-budget",
        type=int,
        default=1 << 20,
        help="cache_budget (bytes) of the forced-spill run (default 1 MiB)",
    )
    parser.add_argument("--json", type=Path, help="write the medians to this JSON file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="use the training images this many times per epoch (a larger dataset: fixed "
        "costs such as TF tracing weigh less, per-epoch work more)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run every recipe this many times, each run in a rotated order, and report the "
        "medians (the machine is shared: one run can be off by 15%%)",
    )
    args = parser.parse_args()
    if not WEIGHTS.exists() or not (FLOWERS / "train").is_dir():
        raise SystemExit(f"needs {WEIGHTS} and {FLOWERS} (../shared/data)")
    epochs = (args.head_epochs, args.finetune_epochs)
    folder = DATA / "flowers-large" / "train" if args.data == "large" else None
    train, test = load(args.size, folder=folder)
    n_train = sum(int(tf.shape(y)[0]) for _, y in train)
    if args.repeat > 1:
        train = train.repeat(args.repeat)
    warm_up(train, args.size)
    log = Path(tempfile.mkdtemp()) / "log.csv"
    recipes: dict[str, tuple[Callable[[], Trained], tf.data.Dataset]] = {
        "seed+preprocess": (lambda: seed_recipe(train, args.size, epochs), test),
        "keras-guide": (lambda: keras_guide_recipe(train, args.size, epochs), test),
        "keras-guide, autotune off": (
            lambda: keras_guide_recipe(train, args.size, epochs, autotune=False),
            test,
        ),
        # The user's call: defaults, early stopping on, default verbosity.
        "finetunekit": (lambda: finetunekit_recipe(train, args.size, epochs), test),
        "finetunekit + CSVLogger": (
            lambda: finetunekit_recipe(
                train, args.size, epochs, callbacks=[keras.callbacks.CSVLogger(str(log))]
            ),
            test,
        ),
        "finetunekit early_stopping=False": (
            lambda: finetunekit_recipe(train, args.size, epochs, early_stopping=False),
            test,
        ),
        "tuned: early_stopping=False, verbose=0": (
            lambda: finetunekit_recipe(
                train, args.size, epochs, early_stopping=False, verbose=0
            ),
            test,
        ),
        "finetunekit cache=False": (
            lambda: finetunekit_recipe(train, args.size, epochs, cache=False),
            test,
        ),
        "floor": (lambda: floor(train, args.size, epochs), test),
        # Augmentation: the guide with the same transforms from Keras' layers, the user's
        # call with the preset (cached, augment_views at its default), uncached (fresh
        # augmentation every epoch), with a cache_budget small enough to spill the
        # features to disk; labelled, the guide with the preset's layer and the user's
        # call with Keras' layers.
        "keras-guide + augment": (
            lambda: keras_guide_recipe(train, args.size, epochs, augment="keras"),
            test,
        ),
        "keras-guide + finetunekit's augment layer": (
            lambda: keras_guide_recipe(train, args.size, epochs, augment="finetunekit"),
            test,
        ),
        "finetunekit augment, Keras' layers": (
            lambda: finetunekit_recipe(
                train, args.size, epochs, augment=keras_augmentation()
            ),
            test,
        ),
        "finetunekit augment": (
            lambda: finetunekit_recipe(train, args.size, epochs, augment="default"),
            test,
        ),
        "finetunekit augment cache=False": (
            lambda: finetunekit_recipe(
                train, args.size, epochs, augment="default", cache=False
            ),
            test,
        ),
        "finetunekit augment, spilled": (
            lambda: finetunekit_recipe(
                train, args.size, epochs, augment="default", cache_budget=args.spill_budget
            ),
            test,
        ),
    }
    for k in args.views:
        recipes[f"finetunekit augment views={k}"] = (
            lambda k=k: finetunekit_recipe(
                train, args.size, epochs, augment="default", augment_views=k
            ),
            test,
        )
    if args.defaults:
        train224, test224 = load(224)
        recipes["seed+preprocess @224"] = (lambda: seed_recipe(train224, 224, epochs), test224)
        recipes["keras-guide @224"] = (lambda: keras_guide_recipe(train224, 224, epochs), test224)
        recipes["defaults @224 (fit(train))"] = (lambda: defaults_run(train224), test224)
        recipes["defaults @224 augment (fit(train))"] = (
            lambda: defaults_run(train224, augment="default"),
            test224,
        )
    if args.only:
        unknown = sorted(set(args.only) - set(recipes))
        if unknown:
            parser.error(f"--only names no recipe of this run: {unknown}; the recipes: "
                         f"{list(recipes)} (--defaults, --views add more)")
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in recipes}
    print(
        f"flowers ({args.data}): {n_train * args.repeat} train / 150 test images, {args.size} px, "
        f"{epochs[0]}+{epochs[1]} epochs,"
        f" {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}"
    )
    for round_ in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"run {round_} of {args.runs}")
        # Each run starts one recipe later, so no recipe always runs first (cold) or
        # right after the same neighbour.
        names = list(recipes)
        shift = (round_ - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            run, test_ds = recipes[name]
            gc.collect()  # the previous recipe's garbage is not this recipe's time
            keras.utils.set_random_seed(0)
            HEAD_SECONDS.clear()
            with PeakMemory() as mem:
                start = time.perf_counter()
                model, preprocess = run()
                wall = time.perf_counter() - start
            acc = accuracy(model, test_ds, preprocess)  # after the clock: same for every recipe
            head = HEAD_SECONDS[0] if HEAD_SECONDS else float("nan")
            results[name].append((wall, mem.peak / 2**20, acc, head))
            print(
                f"  {name:28s} {wall:7.1f} s  {mem.peak / 2**20:7.0f} MiB  acc {acc:.3f}"
                f"  head phase {head:.1f} s",
                flush=True,
            )
            del model
            keras.backend.clear_session()
    median = {name: tuple(np.median(np.array(runs), axis=0)) for name, runs in results.items()}
    print()
    if args.runs > 1:
        print(f"medians of {args.runs} runs (each run has every recipe once, in rotated order):")
    print("| recipe | wall s | head phase s | peak extra MiB | test acc |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, mem_mib, acc, head) in median.items():
        print(f"| {name} | {wall:.1f} | {head:.1f} | {mem_mib:.0f} | {acc:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "data": args.data, "size": args.size, "epochs": epochs,
                    "runs": {k: v for k, v in results.items()},
                    "hardware": f"{os.cpu_count()}-core CPU, no GPU",
                },
                indent=1,
            )
        )
    print()
    ratios = (
        ("keras-guide", "finetunekit"),
        ("keras-guide, autotune off", "finetunekit"),
        ("finetunekit", "floor"),
        # What the floor itself allows: no recipe on the library's pieces beats this ratio.
        ("keras-guide", "floor"),
        ("finetunekit", "finetunekit early_stopping=False"),
        ("finetunekit + CSVLogger", "finetunekit"),
        ("finetunekit cache=False", "keras-guide"),
        ("keras-guide + augment", "finetunekit augment"),
        ("finetunekit augment cache=False", "finetunekit augment"),
        ("finetunekit augment, spilled", "finetunekit augment"),
        ("defaults @224 augment (fit(train))", "defaults @224 (fit(train))"),
    )
    for a, b in ratios:
        if a in results and b in results:
            each = [x[0] / y[0] for x, y in zip(results[a], results[b], strict=True)]
            print(
                f"{a} / {b}: {median[a][0] / median[b][0]:.2f}x on the medians; run by run "
                + ", ".join(f"{r:.2f}x" for r in each)
            )


if __name__ == "__main__":
    main()
