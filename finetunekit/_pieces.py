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
large batches, get the batch as it is. `PIECE_BYTES` was measured on one machine; another
CPU's cache may favour another size (benchmarks/bench_pieces.py measures it).
"""

from __future__ import annotations

import itertools
from typing import Any

import tensorflow as tf

#: Bytes of the largest per-image tensor times the images of a piece. Measured on a 2-core
#: AMD EPYC (32 MiB L3): the fastest piece held 17-28 MiB on every base tried.
PIECE_BYTES = 20 * 2**20


def piece_size(function: Any) -> int | None:
    """Images per call of a traced pass (`tf.function` with an open batch dimension).

    Returns:
        How many images to run at once: `PIECE_BYTES` over the bytes of the largest
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
    return max(1, PIECE_BYTES // peak) if peak else None


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
