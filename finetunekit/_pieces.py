"""Frozen passes on a CPU run each batch in pieces whose activations stay in the cache.

A forward pass through a convolutional base is bound by memory traffic on a CPU: a batch
of 32 MobileNetV2 (alpha 0.5) images at 224 px carries about 75 MiB per layer output,
far beyond the last-level cache, and every layer reads and writes all of it. Run in
pieces of 8 images, the same pass over 320 images took 2.9 s instead of 3.9 s (medians,
2-core AMD EPYC virtual CPU, 32 MiB L3; benchmarks/bench_pieces.py, docs/benchmarks.md).
The fastest piece held about the same bytes on every base measured (MobileNetV2 at
96-224 px, MobileNet v1, EfficientNetB0): `PIECE_BYTES` of the pass's largest per-image
tensor.

Neither Keras nor TensorFlow picks an inference batch by the model's activation size
(`model.predict` runs the batch it is given), hence this module. Training steps keep the
user's batch (it sets the optimisation, not only the speed), and GPUs and TPUs, which want
large batches, get the batch as it is.

The piece scales with the CPU's largest cache, as Linux reports it: `CACHE_SHARE` of it.
On a 2-core Intel Xeon virtual CPU reporting 300 MiB of L3, pieces of 8 or 16 images were
slower than whole batches of 32 (MobileNetV2 alpha 0.5 at 224 px over 350 images: 0.95 s
whole, 1.08 s in pieces of 16, 1.23 s in pieces of 8; MobileNet v1 at 128 px: 0.17 s
whole, 0.30 s in pieces of 8), as the rule says: 0.625 x 300 MiB holds 72 such images.
Where no cache size can be read, `PIECE_BYTES` (the AMD EPYC figure) stands.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import tensorflow as tf

#: Bytes of the largest per-image tensor times the images of a piece where the CPU's cache
#: size is unknown. Measured on a 2-core AMD EPYC (32 MiB L3): the fastest piece held
#: 17-28 MiB on every base tried.
PIECE_BYTES = 20 * 2**20

#: The share of the largest cache a piece may fill: 20 MiB of the EPYC's 32 MiB.
CACHE_SHARE = 0.625

_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


@functools.cache
def piece_bytes() -> int:
    """`CACHE_SHARE` of the CPU's largest cache, else `PIECE_BYTES`.

    Read from Linux's sysfs (`/sys/devices/system/cpu/cpu0/cache/index*/size`, e.g.
    "32768K"); neither TensorFlow nor the standard library reports cache sizes.
    """
    largest = 0
    try:
        entries = list(_CACHES.glob("index*"))
    except OSError:
        entries = []
    for entry in entries:  # an entry that cannot be read counts for nothing, not the rest
        try:
            text = (entry / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in ("K", "M", "G") else text
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return int(largest * CACHE_SHARE) if largest >= 2**20 else PIECE_BYTES


def piece_size(function: Any) -> int | None:
    """Images per call of a traced pass (`tf.function` with an open batch dimension).

    Returns:
        How many images to run at once: `piece_bytes()` over the bytes of the largest
        per-image tensor of the traced graph, at least 1. None (run the batch whole)
        when a GPU or TPU is visible or no per-image size of the graph is static.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return None
    peak = 0
    for op in function.get_concrete_function().graph.get_operations():
        for tensor in op.outputs:
            shape = tensor.shape
            if shape.rank is None or shape.rank < 2 or shape[0] is not None:
                continue  # only tensors with the open batch dimension hold images
            if not shape[1:].is_fully_defined():
                continue  # unknown sizes count for nothing: the piece can only grow
            try:
                itemsize = tensor.dtype.size
            except (TypeError, ValueError):  # resources and variants have no size
                continue
            peak = max(peak, int(shape[1:].num_elements()) * itemsize)
    return max(1, piece_bytes() // peak) if peak else None


def call_in_pieces(function: Any, images: tf.Tensor, piece: int | None) -> Any:
    """`function(images)`, called on consecutive pieces of at most `piece` images.

    The pieces differ by at most one image (32 images in pieces of at most 13 run as
    11 + 11 + 10, 10 in pieces of 3 as 3 + 3 + 2 + 2), and the outputs, any nest of tensors
    with the images along the first axis, are joined in order.
    """
    count = int(images.shape[0]) if images.shape[0] is not None else int(tf.shape(images)[0])
    if piece is None or count <= piece:
        return function(images)
    pieces = -(-count // piece)
    small, larger = divmod(count, pieces)  # the first `larger` pieces get one image more
    bounds = [k * small + min(k, larger) for k in range(pieces + 1)]
    outputs = [function(images[start:end]) for start, end in itertools.pairwise(bounds)]
    return tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *outputs)
