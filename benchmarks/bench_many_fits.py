"""Memory of many `FineTuner.fit` calls in one process (docs/finetuner.md, "Many fits").

Each fit builds a fresh tuner, `FineTuner(base, num_classes=3, weights=None,
input_shape=(32, 32, 3), seed=0).fit((x, y), head_epochs=1, finetune_epochs=1)` on
48 random images (default verbosity, early stopping on), then drops it and collects
garbage; the resident memory is read after each fit. Bases whose ops are made with
`tf.custom_gradient` (the swish of EfficientNet) register each op's gradient in
TensorFlow's global registry when traced; `fit` removes the entries of Keras' steps
once nothing holds them. With `--keep`, that release is switched off, to show what
it saves. Each setting runs in a process of its own, so one cannot inherit the
other's memory.

    python benchmarks/bench_many_fits.py                        # EfficientNet-B0, both ways
    python benchmarks/bench_many_fits.py --base mobilenet_v2 --alpha 0.35 --fits 8
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def fits(base: str, alpha: float | None, count: int, keep: bool) -> list[int]:
    """The resident memory (MB) after each of `count` fits in this process."""
    import numpy as np

    import finetunekit as ftk
    from finetunekit import _gradients

    if keep:  # the control: every registered gradient stays, as in plain TensorFlow
        _gradients.release = lambda before, graphs=None, **_: 0  # type: ignore[assignment]
    kwargs = {} if alpha is None else {"alpha": alpha}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
    y = np.arange(48) % 3
    after = []
    for _ in range(count):
        tuner = ftk.FineTuner(
            base, num_classes=3, weights=None, input_shape=(32, 32, 3), seed=0, **kwargs
        )
        tuner.fit((x, y), head_epochs=1, finetune_epochs=1)
        del tuner
        gc.collect()
        after.append(rss_mb())
    return after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="efficientnet_b0")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--fits", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="this process: release switched off")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rss = fits(args.base, args.alpha, args.fits, args.keep)
        print("RSS", " ".join(map(str, rss)))  # the last line; the fits' own output above
        return
    print(f"{args.base}{'' if args.alpha is None else f' alpha {args.alpha}'}, {args.fits} fits")
    for keep in (False, True):
        command = [sys.executable, __file__, "--child", "--base", args.base, "--fits"]
        command += [str(args.fits)] + ([] if args.alpha is None else ["--alpha", str(args.alpha)])
        out = subprocess.run(
            command + (["--keep"] if keep else []), check=True, capture_output=True, text=True
        ).stdout.splitlines()[-1].split()
        rss = [int(v) for v in out[1:]]
        # From the second fit on: the first pays TensorFlow's own warm-up.
        per_fit = (rss[-1] - rss[1]) / max(len(rss) - 2, 1)
        label = "entries kept (control)" if keep else "released (the default)"
        print(f"{label:24} RSS after each fit (MB): {rss}; {per_fit:.0f} MB a fit from the 2nd")


if __name__ == "__main__":
    main()
