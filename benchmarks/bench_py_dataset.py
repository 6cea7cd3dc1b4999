"""A `keras.utils.PyDataset` that decodes its files, read with workers=1 and workers=4.

The PyDataset loads the 350 photos of flowers/train with `keras.utils.load_img` (PIL)
at 160 px, 32 a batch. Timed, alternated in one process: one pass over it as FineTuner
reads it (`finetunekit.data.as_dataset`), and the user's call
`FineTuner(...).fit(batches, head_epochs=5, finetune_epochs=5)` on it, everything else
at its default. Prints the medians of --runs runs. `--wait S` makes every batch also
wait S seconds before it is read (storage that answers slowly); `--pass-only` times the
pass alone.

    python benchmarks/bench_py_dataset.py --runs 3
    python benchmarks/bench_py_dataset.py --runs 3 --wait 0.05 --pass-only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import finetunekit as ftk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SIZE = 160


class Photos(keras.utils.PyDataset):
    """(images, labels) batches decoded from the files on every read."""

    def __init__(
        self, files: list[Path], labels: np.ndarray, wait: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.wait = wait
        order = np.random.default_rng(0).permutation(len(files))  # classes mixed in batches
        self.files = [files[i] for i in order]
        self.labels = labels[order]

    def __len__(self) -> int:
        return -(-len(self.files) // 32)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        part = slice(index * 32, (index + 1) * 32)
        time.sleep(self.wait)
        images = [
            keras.utils.img_to_array(keras.utils.load_img(f, target_size=(SIZE, SIZE)))
            for f in self.files[part]
        ]
        return np.stack(images), self.labels[part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds every batch waits")
    parser.add_argument("--pass-only", action="store_true")
    args = parser.parse_args()
    root = DATA / "flowers" / "train"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted((root / c).iterdir())]
    labels = np.array([classes.index(f.parent.name) for f in files])

    def one_pass(workers: int) -> None:
        for _ in ftk.data.as_dataset(Photos(files, labels, args.wait, workers=workers)):
            pass

    def users_call(workers: int) -> None:
        tuner = ftk.FineTuner(
            "mobilenet_v2", num_classes=5, weights=WEIGHTS, input_shape=(SIZE, SIZE, 3),
            alpha=0.35, seed=0,
        )
        with contextlib.redirect_stdout(io.StringIO()):
            tuner.fit(
                Photos(files, labels, args.wait, workers=workers), head_epochs=5,
                finetune_epochs=5,
            )
        keras.backend.clear_session()

    one_pass(1)  # first reads of the files and first use of TensorFlow, untimed
    times: dict[str, list[float]] = {}
    for run in range(args.runs):
        for workers in (1, 4) if run % 2 == 0 else (4, 1):
            calls = [("one pass", one_pass), ("the user's call", users_call)]
            for name, call in calls[:1] if args.pass_only else calls:
                start = time.perf_counter()
                call(workers)
                times.setdefault(f"{name}, workers={workers}", []).append(
                    time.perf_counter() - start
                )
    print(f"flowers/train, 350 files, {SIZE} px, {args.wait} s wait a batch, "
          f"{os.cpu_count()} CPUs, {args.runs} runs")
    for key, runs in sorted(times.items()):
        print(f"{key:32s} median {statistics.median(runs):6.2f} s  "
              f"runs {', '.join(f'{t:.2f}' for t in runs)}")


if __name__ == "__main__":
    main()
