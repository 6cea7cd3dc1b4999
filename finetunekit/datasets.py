"""Small image datasets made in process, for demos and tests that must run offline.

`shapes` draws geometric figures with numpy alone: no download, no files, the same
pixels for the same seed on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from finetunekit.errors import ConfigError

__all__ = ["shapes", "Shapes", "SHAPE_CLASSES"]

#: Every class `shapes` can draw, in label order when `classes` is not given.
SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "stripes",
    "frame",
    "cross",
    "star",
    "checker",
    "dots",
    "crescent",
)

# A shape is a function of local coordinates (u, v), in units of the shape's radius, that
# returns a signed distance: negative inside, positive outside. Multiplied by the radius in
# pixels it anti-aliases the edge.
_Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    angles = 2 * np.pi * np.arange(sides) / sides + np.pi / 2
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) - apothem


def _pattern(inside: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """A periodic pattern (`wave` < 0 is ink) clipped to a region."""
    return np.maximum(inside, wave)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    radius = np.hypot(u, v)
    angle = np.arctan2(v, u)
    # Five points: the outline's radius swings between 0.45 and 1 with the angle.
    spikes = np.abs(((angle * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2
    return (radius - (0.45 + 0.55 * spikes)) * 0.6


_SHAPES: dict[str, _Shape] = {
    "circle": lambda u, v: np.hypot(u, v) - 0.9,
    "square": lambda u, v: _box(u, v, 0.75, 0.75),
    "triangle": lambda u, v: _polygon(u, v, 3, 0.45),
    "plus": lambda u, v: np.minimum(_box(u, v, 0.95, 0.25), _box(u, v, 0.25, 0.95)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.7) - 0.22,
    "stripes": lambda u, v: _pattern(_box(u, v, 0.85, 0.85), np.sin(u * 2.5 * np.pi) * 0.15),
    "frame": lambda u, v: np.abs(_box(u, v, 0.65, 0.65)) - 0.18,
    "cross": lambda u, v: np.minimum(
        _box((u + v) / np.sqrt(2), (u - v) / np.sqrt(2), 0.95, 0.22),
        _box((u + v) / np.sqrt(2), (u - v) / np.sqrt(2), 0.22, 0.95),
    ),
    "star": _star,
    "checker": lambda u, v: _pattern(
        _box(u, v, 0.85, 0.85), np.sin(u * 1.6 * np.pi) * np.sin(v * 1.6 * np.pi) * 0.3
    ),
    "dots": lambda u, v: _pattern(
        _box(u, v, 0.95, 0.95),
        np.hypot((u * 1.5) % 1.0 - 0.5, (v * 1.5) % 1.0 - 0.5) / 1.5 - 0.16,
    ),
    "crescent": lambda u, v: np.maximum(
        np.hypot(u, v) - 0.9, -(np.hypot(u - 0.45, v - 0.15) - 0.7)
    ),
}

# Shapes that turn into another class when rotated far (plus <-> cross, square <-> diamond)
# are drawn upright, tilted at most this many radians; the rest turn freely.
_MAX_TILT = {"square": 0.3, "plus": 0.3, "cross": 0.3, "frame": 0.3, "checker": 0.3}


class Shapes(NamedTuple):
    """What `shapes` returns; unpacks as `x, y, class_names`.

    Attributes:
        x: images, `uint8` of shape `(n, image_size, image_size, 3)`, raw pixels 0-255.
        y: labels, `int64` of shape `(n,)`, indices into `class_names`.
        class_names: the class of each label index.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]


def shapes(
    n_per_class: int = 100,
    *,
    image_size: int = 32,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    noise: float = 12.0,
) -> Shapes:
    """Draws a labelled dataset of geometric shapes with numpy, in memory.

    Each image holds one figure (see `SHAPE_CLASSES`: circle, square, triangle,
    plus, ring, stripes, frame, cross, star, checker, dots, crescent) at a random
    position, size and rotation, in a random colour on a random background
    gradient with pixel noise and a few distracting specks. Telling the classes
    apart takes edges, corners, curvature and texture, the features a CNN learns
    first, so a base pretrained on some classes fine-tunes faster and better on the
    others than a model trained from scratch: the offline stand-in for ImageNet in
    `finetunekit demo`.

    The same arguments give the same pixels on every machine. Draw train and test
    sets with different seeds to get independent samples.

    Args:
        n_per_class: images per class.
        image_size: height and width in pixels (at least 16).
        classes: names from `SHAPE_CLASSES`, in label order; all of them when None.
        seed: seed of every random choice.
        noise: standard deviation of the Gaussian pixel noise (0-255 scale).

    Returns:
        A `Shapes(x, y, class_names)`, examples shuffled, `n_per_class` of each class.

    Raises:
        ConfigError: an unknown class, a repeated class, or a bad size or count.

    Examples:
        >>> x, y, names = shapes(50, image_size=32, classes=("circle", "square"), seed=0)
        >>> x.shape, x.dtype, names
        ((100, 32, 32, 3), dtype('uint8'), ('circle', 'square'))
    """
    names = tuple(SHAPE_CLASSES if classes is None else classes)
    unknown = [name for name in names if name not in _SHAPES]
    if isinstance(classes, str) or unknown or not names:
        raise ConfigError(
            f"classes must be a sequence of names from {list(SHAPE_CLASSES)}; received "
            f"{classes!r}" + (f" (unknown: {unknown})." if unknown else ".")
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"classes holds a name twice: {list(names)}.")
    for arg, value, low in (("n_per_class", n_per_class, 1), ("image_size", image_size, 16)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{arg} must be an int >= {low}; received {value!r}.")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError(f"noise must be a number >= 0; received {noise!r}.")

    rng = np.random.default_rng(seed)
    images = np.concatenate(
        [_draw(name, int(n_per_class), int(image_size), rng, float(noise)) for name in names]
    )
    labels = np.repeat(np.arange(len(names), dtype=np.int64), n_per_class)
    order = rng.permutation(len(labels))
    return Shapes(images[order], labels[order], names)


def _draw(name: str, n: int, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """`n` images of one class, all at once: every per-image choice is an `(n, 1, 1)` array."""

    def per_image(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1))

    grid = np.arange(size, dtype=np.float64) + 0.5
    ys, xs = grid[None, :, None], grid[None, None, :]
    radius = per_image(0.22, 0.42) * size
    cx = per_image(0, 1) * (size - 2 * radius) + radius
    cy = per_image(0, 1) * (size - 2 * radius) + radius
    tilt = _MAX_TILT.get(name, np.pi)
    angle = per_image(-tilt, tilt)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xs - cx) * cos + (ys - cy) * sin) / radius
    v = (-(xs - cx) * sin + (ys - cy) * cos) / radius
    ink = np.clip(0.5 - _SHAPES[name](u, v) * radius, 0.0, 1.0)[..., None]

    background = _gradient(n, size, rng, xs, ys)
    colour = _contrasting(background.mean(axis=(1, 2)), rng)[:, None, None, :]
    image = background * (1 - ink) + colour * ink
    image = _specks(image, rng)
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _gradient(
    n: int, size: int, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Backgrounds: a random colour with a soft linear gradient in a random direction."""
    base = rng.uniform(0, 255, size=(n, 1, 1, 3))
    direction = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    ramp = (np.cos(direction) * xs + np.sin(direction) * ys) / size - 0.5
    strength = rng.uniform(-60, 60, size=(n, 1, 1, 3))
    return np.clip(base + ramp[..., None] * strength, 0, 255)


def _contrasting(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random colours at least 90 levels of brightness away from each background."""
    colour = rng.uniform(0, 255, size=background.shape)
    brightness = background.mean(axis=1)
    for _ in range(20):
        close = np.abs(colour.mean(axis=1) - brightness) < 90
        if not close.any():
            break
        colour[close] = rng.uniform(0, 255, size=(int(close.sum()), 3))
    # Whatever is still too close is pushed to the far end of the brightness range.
    close = np.abs(colour.mean(axis=1) - brightness) < 90
    colour[close] = np.where(brightness[close, None] > 127, 20.0, 235.0)
    return colour


def _specks(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few 2x2 specks of random colour, so a lone bright pixel is no giveaway."""
    n, size = image.shape[0], image.shape[1]
    count = 3
    rows = rng.integers(0, size - 1, size=(n, count))
    cols = rng.integers(0, size - 1, size=(n, count))
    colours = rng.uniform(0, 255, size=(n, count, 3))
    which = np.repeat(np.arange(n), count)
    for dr in (0, 1):
        for dc in (0, 1):
            image[which, rows.ravel() + dr, cols.ravel() + dc] = colours.reshape(-1, 3)
    return image
