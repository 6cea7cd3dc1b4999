"""Peak memory of an augmented fit whose stored views spill to disk, at two data sizes.

`FineTuner(..., augment="default", cache_budget=B).fit(train, head_epochs=2,
finetune_epochs=2, augment_views=8)` (MobileNetV2 alpha 0.35 with the real ImageNet
weights, 160 px) on the 350 photos of flowers/train and on the 1,989 of
flowers-large/train, with the stored features in memory (the default budget) and
spilled (`cache_budget=1 MiB`). Eight views make the stored features large enough
to stand out from the process's own noise: about 10.7 KB an image and view at 160 px
(the pooled features and the maps below the two unfrozen blocks).

Each configuration runs in a fresh process, after one plain pass of the base over the
images (the allocator's and tf.data's first-use costs), and reports the most the
process's resident memory grew during the fit (sampled every 10 ms) against the
stored features' size. The claim checked: spilled, the peak does not grow with the
data (the budget plus a constant); in memory, it grows by about the stored features.

    python benchmarks/bench_spill_memory.py              # about 4 minutes on 2 cores
    python benchmarks/bench_spill_memory.py --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
FOLDERS = {"350": DATA / "flowers" / "train", "1,989": DATA / "flowers-large" / "train"}
BUDGETS = {"in memory": None, "spilled (1 MiB)": 2**20}


def one(folder: str, budget: int | None, views: int) -> dict[str, float]:
    """Runs in the child process: the fit's wall time, peak growth and stored bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import contextlib
    import io
    import logging

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_flowers import WEIGHTS, PeakMemory, load, rss_bytes, warm_up

    import finetunekit as ftk

    stored: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stored.append(record.getMessage())

    logging.getLogger("finetunekit").addHandler(Catch())
    logging.getLogger("finetunekit").setLevel(logging.INFO)
    class Sampler(PeakMemory):
        """PeakMemory, its peak also split into anonymous and file-backed memory.

        A spilled cache reads its files through `np.memmap`: the pages it touches count
        in the resident size as file-backed pages, which the kernel drops under memory
        pressure; anonymous memory is what the process itself holds.
        """

        def __init__(self) -> None:
            super().__init__()
            self.start_parts = self.parts()
            self.peak_parts = dict.fromkeys(self.start_parts, 0)

        @staticmethod
        def parts() -> dict[str, int]:
            fields = {}
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "RssFile:")):
                        key, value, _ = line.split()
                        fields[key.rstrip(":")] = int(value) * 1024
            return fields

        def _run(self) -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_bytes() - self.start)
                for key, value in self.parts().items():
                    self.peak_parts[key] = max(self.peak_parts[key], value - self.start_parts[key])
                self._stop.wait(0.01)

    train, _ = load(160, folder=Path(folder))
    warm_up(train, 160)
    options = {} if budget is None else {"cache_budget": budget}
    tuner = ftk.FineTuner(
        "mobilenet_v2", num_classes=5, weights=WEIGHTS, input_shape=(160, 160, 3),
        alpha=0.35, seed=0, augment="default", **options,
    )
    started = time.perf_counter()
    with Sampler() as memory, contextlib.redirect_stdout(io.StringIO()):
        history = tuner.fit(train, head_epochs=2, finetune_epochs=2, augment_views=views)
    return {
        "seconds": time.perf_counter() - started,
        "peak_mib": memory.peak / 2**20,
        "anon_mib": memory.peak_parts["RssAnon"] / 2**20,
        "file_mib": memory.peak_parts["RssFile"] / 2**20,
        "spilled": float(any(report.spilled for report in history.reports)),
        "notes": [m for m in stored if "MiB" in m or "MB" in m or "spill" in m][:4],
    }  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, budget = args.child
        result = one(folder, None if budget == "none" else int(budget), args.views)
        print("RESULT " + json.dumps(result))
        return
    print(f"augment='default', augment_views={args.views}, 2+2 epochs, 160 px, fresh process each")
    rows = []
    for data, folder in FOLDERS.items():
        for label, budget in BUDGETS.items():
            peaks, walls, anons, files = [], [], [], []
            for _ in range(args.runs):
                out = subprocess.run(
                    [sys.executable, __file__, "--views", str(args.views), "--child",
                     str(folder), "none" if budget is None else str(budget)],
                    capture_output=True, text=True, check=True,
                )
                line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
                result = json.loads(line[len("RESULT "):])
                peaks.append(result["peak_mib"])
                walls.append(result["seconds"])
                anons.append(result["anon_mib"])
                files.append(result["file_mib"])
                print(f"  {data:>6} photos, {label:16s} {result['seconds']:6.1f} s "
                      f"peak +{result['peak_mib']:5.0f} MiB (anonymous +{result['anon_mib']:.0f}, "
                      f"file-backed +{result['file_mib']:.0f}) spilled={bool(result['spilled'])} "
                      f"{result['notes']}", flush=True)
            rows.append(
                (data, label, *(statistics.median(v) for v in (walls, peaks, anons, files)))
            )
    print()
    print("| photos | stored features | fit s | peak extra MiB | of it anonymous | file-backed |")
    print("|---|---|---:|---:|---:|---:|")
    for data, label, wall, peak, anon, file in rows:
        print(f"| {data} | {label} | {wall:.1f} | {peak:.0f} | {anon:.0f} | {file:.0f} |")


if __name__ == "__main__":
    main()
