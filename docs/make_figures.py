"""Draws the pictures of the docs into docs/images/, from real runs.

    python docs/make_figures.py

Reads the flowers photos and the MobileNetV2 (alpha 0.35) ImageNet weights from
../shared/data beside the repository (or FINETUNEKIT_SHARED_DATA), trains once
(about half a minute on a 2-core CPU) and writes:

- flowers-samples.png: two photos of every class, with their labels (data page);
- history.png: a `FineTuner.fit` history with the unfreeze point (FineTuner, train);
- unfreeze-blocks.png: the blocks `unfreeze_last(model, 2, unit="block")` selects;
- benchmarks.png: the 160 px table of docs/benchmarks.md as a chart;
- schedule-rates.png: the learning rate of the head and of every block over the epochs of
  a gradual schedule with per-block rates, warm-up and cosine (schedules page).

`python docs/make_figures.py schedule-rates` draws only the named figures (no training).

It also prints the table of the last blocks that the unfreeze page shows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
IMAGES = DOCS / "images"
SHARED = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
FLOWERS = SHARED / "flowers"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
sys.path.insert(0, str(ROOT))  # this checkout's finetunekit, installed or not
HARDWARE = "2-core AMD EPYC CPU, no GPU"
SIZE = 160


def samples(path: Path) -> None:
    from PIL import Image

    classes = sorted(p.name for p in (FLOWERS / "train").iterdir() if p.is_dir())
    figure, axes = plt.subplots(2, len(classes), figsize=(2.2 * len(classes), 4.6))
    for column, name in enumerate(classes):
        files = sorted((FLOWERS / "train" / name).glob("*.jpg"))[:2]
        for row, file in enumerate(files):
            axis = axes[row, column]
            photo = Image.open(file).convert("RGB")
            photo.thumbnail((200, 200))  # keeps the PNG small
            axis.imshow(photo)
            axis.set_title(name, fontsize=10)
            axis.axis("off")
    figure.suptitle("flowers/train: two photos of each of the 5 classes", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)


def history(path: Path) -> None:
    import finetunekit as ftk

    tuner = ftk.FineTuner(
        "mobilenet_v2",
        num_classes=5,
        weights=str(WEIGHTS),
        alpha=0.35,
        input_shape=(SIZE, SIZE, 3),
    )
    train, val, _ = ftk.data.from_directory(
        FLOWERS / "train", image_size=tuner.input_size, validation_split=0.2, seed=0
    )
    result = tuner.fit(train, validation_data=val, verbose=0)
    title = (
        f"FineTuner.fit on flowers/train (280 training, 70 validation images), "
        f"MobileNetV2 alpha 0.35 at {SIZE} px, default recipe; {HARDWARE}"
    )
    ftk.plot_history(result, path, title=title)
    print(f"history: {len(result.phases)} epochs, unfreeze at epoch {result.unfreeze_epoch}")


def unfreeze_blocks(path: Path) -> None:
    import finetunekit as ftk
    from finetunekit import structure
    from finetunekit.freezing import trainable_report

    base = ftk.load_base("mobilenet_v2", weights=str(WEIGHTS), alpha=0.35, input_shape=(96, 96, 3))
    ftk.freeze(base)
    model = ftk.add_head(base, num_classes=5)
    ftk.unfreeze_last(model, 2, unit="block")
    chosen = set(trainable_report(model).trainable_blocks)
    blocks = structure.blocks(base)
    shown = blocks[-8:]
    print(
        '| block | weighted layers | parameters | after `unfreeze_last(model, 2, unit="block")` |'
    )
    print("|---|---:|---:|---|")
    for block in blocks[-4:]:
        state = "**trains**" if block.name in chosen else "frozen"
        print(f"| `{block.name}` | {len(block.weighted())} | {block.param_count:,} | {state} |")
    figure, axis = plt.subplots(figsize=(10, 2.4))
    x = 0.0
    axis.text(
        x + 0.6,
        0.5,
        f"… {len(blocks) - len(shown)}\nearlier\nblocks",
        ha="center",
        va="center",
        fontsize=9,
        color="grey",
    )
    x += 1.3
    for block in shown:
        trains = block.name in chosen
        axis.add_patch(
            plt.Rectangle((x, 0.1), 1.0, 0.8, color="tab:orange" if trains else "lightgrey")
        )
        label = f"{block.name}\n{block.param_count / 1000:.1f}k params"
        axis.text(x + 0.5, 0.5, label, ha="center", va="center", fontsize=8)
        x += 1.1
    axis.add_patch(plt.Rectangle((x, 0.1), 1.0, 0.8, color="tab:blue", alpha=0.5))
    axis.text(x + 0.5, 0.5, "head\n(always\ntrains)", ha="center", va="center", fontsize=8)
    axis.set_xlim(0, x + 1.1)
    axis.set_ylim(0, 1)
    axis.axis("off")
    axis.set_title(
        'MobileNetV2 (alpha 0.35): unfreeze_last(model, 2, unit="block") trains the orange '
        "blocks; grey stays frozen",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def benchmark_chart(path: Path) -> None:
    """Charts the first results table of benchmarks.md: the figures on the page."""
    text = (DOCS / "benchmarks.md").read_text()
    table = text[text.index("| recipe | wall time (s)") :].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0].replace("`", ""), float(cells[1].strip("*")), cells[3].strip("*")))
    names = [r[0] for r in rows][::-1]
    seconds = [r[1] for r in rows][::-1]
    accuracy = [r[2] for r in rows][::-1]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    colors = ["tab:orange" if n.startswith("FineTuner (") else "tab:grey" for n in names]
    bars = axis.barh(names, seconds, color=colors)
    for bar, acc in zip(bars, accuracy, strict=True):
        axis.text(
            bar.get_width() + 0.2,
            bar.get_y() + bar.get_height() / 2,
            f"{bar.get_width():.1f} s, test acc {acc}",
            va="center",
            fontsize=8,
        )
    axis.set_xlabel("wall time of the fine-tune (s), median; lower is better")
    axis.set_xlim(0, max(seconds) * 1.45)
    axis.set_title(
        f"350 flowers photos, MobileNetV2 alpha 0.35, 160 px, 5 + 5 epochs\n{HARDWARE}", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


#: The recipe the schedules page draws: 3 stages, per-block rates, warm-up and cosine.
SCHEDULE = dict(
    head_epochs=4,
    finetune_epochs=4,
    unfreeze=(1, 2, 4),
    lr_decay=0.5,
    warmup=0.25,
    cosine=True,
    finetune_learning_rate=1e-4,
)


def schedule_rates(path: Path) -> None:
    """The rates the library's own schedules give each group, step by step, per phase."""
    import numpy as np

    import finetunekit as ftk
    from finetunekit import freezing, schedules

    recipe = ftk.Recipe(**SCHEDULE)  # type: ignore[arg-type]
    model = ftk.add_head(
        ftk.load_base("mobilenet_v2", weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35), 5
    )
    steps = 9  # 280 photos in batches of 32
    curves: dict[str, list[tuple[float, float]]] = {}
    start = 0
    for phase in recipe.phases():
        freezing.set_trainable(model, phase.unfreeze, unit=phase.unit)
        groups = [("head", phase.learning_rate)]
        groups += list(reversed(schedules.block_rates(model, phase)))  # top block first
        for name, peak in groups:
            rate = schedules.rate_schedule(peak, phase, steps)
            for step in range(phase.epochs * steps):
                value = float(rate(step)) if callable(rate) else rate
                curves.setdefault(name, []).append((start + step / steps, value))
        for name in curves:  # a break in every line between phases
            curves[name].append((start + phase.epochs, float("nan")))
        start += phase.epochs
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for name, points in curves.items():
        x, y = np.array(points).T
        axis.plot(x, np.where(y > 0, y, np.nan), label=name, lw=1.6 if name == "head" else 1.2)
    edge = 0
    for phase in recipe.phases():
        axis.axvline(edge, color="grey", lw=0.6, ls=":")
        axis.text(edge + 0.1, 2.5e-2, phase.name, fontsize=7, va="top")
        edge += phase.epochs
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("learning rate")
    axis.set_title(
        "Recipe(head_epochs=4, finetune_epochs=4, unfreeze=(1, 2, 4), lr_decay=0.5,\n"
        "warmup=0.25, cosine=True, finetune_learning_rate=1e-4): rate per group, 9 steps/epoch",
        fontsize=8,
    )
    axis.legend(fontsize=7, loc="lower left", ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


FIGURES = {
    "flowers-samples": samples,
    "unfreeze-blocks": unfreeze_blocks,
    "benchmarks": benchmark_chart,
    "history": history,
    "schedule-rates": schedule_rates,
}


def main(names: list[str]) -> int:
    chosen = names or list(FIGURES)
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        print(f"unknown figures {unknown}; choose from {sorted(FIGURES)}", file=sys.stderr)
        return 2
    needs_data = {"flowers-samples", "unfreeze-blocks", "history"}
    if needs_data & set(chosen) and (not (FLOWERS / "train").is_dir() or not WEIGHTS.exists()):
        print(f"needs the flowers photos and weights under {SHARED}", file=sys.stderr)
        return 1
    IMAGES.mkdir(exist_ok=True)
    for name in chosen:
        FIGURES[name](IMAGES / f"{name}.png")
        print(f"wrote {(IMAGES / f'{name}.png').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
