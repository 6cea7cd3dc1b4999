"""What costs the user's call no longer pays took, switched back on beside the library as it is.

The call is `bench_flowers.py`'s (`FineTuner(...).fit(train, head_epochs=5,
finetune_epochs=5)` on the 350 flowers at 160 px, defaults otherwise), timed in one
process, alternating "with" (the costs as they were) and "without" (the library as it
is), after the same warm-up. The default (`--costs fixed`) switches on three:

- the plan's parameter counts copied every weight's values (`v.numpy().size`);
- the best weights were put back by assigning every weight of the model;
- the gradient registry was cleaned after every fit (`_gradients.release` with
  `at_least=1`: a collection and a heap walk each time).

`--costs autotune` switches tf.data's autotuning back on for the iterators `fit` makes
(`caching.untuned`), whose deletion waited for the tuner's next wake-up. `--costs
validation` puts Keras' own validation back on stored features (a test function traced
per phase, an `evaluate` per epoch) instead of one eager step per epoch. `--variant
augment` times the call with `augment="default"`, `--variant uncached` with
`cache=False`.

    python benchmarks/bench_fixed_costs.py --runs 5
    python benchmarks/bench_fixed_costs.py --costs autotune --variant uncached --runs 2
    python benchmarks/bench_fixed_costs.py --costs validation --runs 6
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--costs", choices=("fixed", "autotune", "validation"), default="fixed")
    parser.add_argument("--variant", choices=("plain", "augment", "uncached"), default="plain")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("bench_flowers", HERE / "bench_flowers.py")
    assert spec is not None and spec.loader is not None
    flowers = importlib.util.module_from_spec(spec)
    sys.argv = sys.argv[:1]
    spec.loader.exec_module(flowers)
    import keras

    from finetunekit import _gradients, caching, freezing, training

    restore = training.BestWeights.restore
    count = freezing._count
    untuned = caching.untuned
    eager_validation = caching._EagerValidation.of

    def restore_all(self: Any, everything: bool = False) -> None:
        restore(self, everything=True)

    def count_by_values(variables: list[Any]) -> int:
        return int(sum(int(v.numpy().size) for v in variables))

    def costs(on: bool) -> None:
        if args.costs == "autotune":
            caching.untuned = (lambda dataset: dataset) if on else untuned
            return
        if args.costs == "validation":
            keras_own = staticmethod(lambda *args: None)
            caching._EagerValidation.of = keras_own if on else eager_validation  # type: ignore[method-assign]
            return
        _gradients.FEW = 1 if on else 8
        training.BestWeights.restore = restore_all if on else restore  # type: ignore[method-assign]
        freezing._count = count_by_values if on else count

    options = {"plain": {}, "augment": {"augment": "default"}, "uncached": {"cache": False}}

    train, _ = flowers.load(160)
    flowers.warm_up(train, 160)
    times: dict[str, list[float]] = {"with": [], "without": []}
    for run in range(args.runs):
        for mode in ("with", "without") if run % 2 == 0 else ("without", "with"):
            costs(mode == "with")
            gc.collect()
            keras.utils.set_random_seed(0)
            start = time.perf_counter()
            flowers.finetunekit_recipe(train, 160, (5, 5), **options[args.variant])
            times[mode].append(time.perf_counter() - start)
            print(f"{mode:8s} {times[mode][-1]:.2f} s", flush=True)
            keras.backend.clear_session()
    costs(False)
    for mode, values in times.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"{mode}: median {statistics.median(values):.2f} s; {each}")
    ratio = statistics.median(times["with"]) / statistics.median(times["without"])
    print(f"with / without: {ratio:.3f}x")


if __name__ == "__main__":
    main()
