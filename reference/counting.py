"""Seeded counting canvases: several shape classes with 0..9 instances each, for ACE counting.

Each image holds, for every class k, ``c_k`` filled shapes (circle, square,
triangle, ...) of random size, slight rotation, intensity and position. The
target is the count vector; with the blank column filled by
:func:`ace_core.counts_with_background` it is the ACE label of a counting
model, and the readout is the rounded aggregated probability
(:func:`ace_core.decode_counts`).

Design choices:

- The count vector is drawn with each ``c_k`` uniform in ``0..max_per_class``
  and redrawn while ``sum c_k > max_total`` (bounded: after 64 draws the
  largest counts are lowered until the total fits). So every count 0..9
  occurs, large counts less often when several classes are large together.
- Shapes never overlap: they keep at least one pixel of background between
  them, so that a shape is one blob and counts are unambiguous. Placement is
  rejection sampling with restarts and a grid fallback
  (:func:`~ace_core.reference._render.place_boxes`); the constructor rejects
  settings where ``max_total`` shapes of the largest size cannot fit.
- Shapes are anti-aliased masks computed in NumPy (4x supersampling), so this
  module needs neither Pillow nor scikit-learn.
- There is no glyph split (shapes are procedural): :meth:`CountingCanvas.heldout`
  draws new canvases from a child stream of its seed.
"""

from __future__ import annotations

import numpy as np

from . import _render
from .scatter_toy import ObjectBatch, counts_of

__all__ = ["SHAPES", "CountingCanvas", "ObjectBatch", "shape_mask"]

# Polygons in [-1, 1]² (y down), scaled to fill the box after rotation.
_POLYGONS = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 0.8), (-1, 0.8)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
}
#: The shapes a class can be, in the order classes take them by default.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Rotations (degrees) a shape may be drawn at.
_ANGLES = (-15.0, -7.5, 0.0, 7.5, 15.0)
_SUPERSAMPLE = 4


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Points inside a convex polygon (vertices in either winding order)."""
    signs = []
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        signs.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
    signs = np.stack(signs)
    return np.all(signs >= 0, axis=0) | np.all(signs <= 0, axis=0)


def shape_mask(name: str, size: int, angle: float = 0.0) -> np.ndarray:
    """A filled, anti-aliased ``name`` in a ``size x size`` box: float32 coverage in [0, 1].

    Examples
    --------
    >>> m = shape_mask("square", 4)
    >>> m.shape, float(m.min()), float(m.max())
    ((4, 4), 1.0, 1.0)
    """
    n = size * _SUPERSAMPLE
    centres = (np.arange(n) + 0.5) / n * 2 - 1  # sample points in [-1, 1]
    y, x = np.meshgrid(centres, centres, indexing="ij")
    theta = np.deg2rad(angle)
    # Rotate the sample points the other way, which rotates the shape by `angle`.
    xr = np.cos(theta) * x + np.sin(theta) * y
    yr = -np.sin(theta) * x + np.cos(theta) * y
    if name == "circle":
        inside = x**2 + y**2 <= 1.0
    elif name == "ring":
        radius = x**2 + y**2
        inside = (radius <= 1.0) & (radius >= 0.45**2)
    elif name == "cross":
        inside = ((np.abs(xr) <= 0.3) & (np.abs(yr) <= 1.0)) | ((np.abs(yr) <= 0.3) & (np.abs(xr) <= 1.0))
        inside &= (np.abs(x) <= 1) & (np.abs(y) <= 1)
    elif name in _POLYGONS:
        vertices = np.asarray(_POLYGONS[name], dtype=np.float64)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        vertices = vertices @ rotation.T
        vertices -= (vertices.max(axis=0) + vertices.min(axis=0)) / 2  # centre the bounding box
        vertices /= np.abs(vertices).max()  # fill the box
        inside = _inside_polygon(x, y, vertices)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
    coverage = inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))
    return coverage.astype(np.float32)


class CountingCanvas:
    """Canvases with ``0..max_per_class`` shapes of each class; the target is the per-class count.

    Parameters
    ----------
    canvas : int
        S, the image side in pixels.
    classes : int
        Object classes (the blank comes on top); class k is ``shapes[k - 1]``.
    max_per_class : int
        Each class has ``0..max_per_class`` instances.
    max_total : int
        At most this many shapes per image.
    shapes : sequence of str
        Shape names, at least ``classes`` of them (see :data:`SHAPES`).
    noise : float
        Standard deviation of the Gaussian noise (the result is clipped to [0, 1]).
    seed : int
        Seed of this object's own stream (used when ``rng=None``).
    sizes : (int, int)
        Shape sides in pixels are uniform in this inclusive range.
    """

    def __init__(
        self,
        *,
        canvas: int = 40,
        classes: int = 3,
        max_per_class: int = 9,
        max_total: int = 12,
        shapes: tuple[str, ...] = ("circle", "square", "triangle"),
        noise: float = 0.05,
        seed: int = 0,
        sizes: tuple[int, int] = (5, 8),
    ) -> None:
        self.canvas = _render.check_int("canvas", canvas)
        self.classes = _render.check_int("classes", classes)
        self.max_per_class = _render.check_int("max_per_class", max_per_class, low=0)
        self.max_total = _render.check_int("max_total", max_total, low=0)
        shapes = tuple(shapes)
        if len(shapes) < self.classes:
            raise ValueError(f"{classes} classes need {classes} shapes, got {len(shapes)}: {shapes}")
        if len(set(shapes[: self.classes])) < self.classes:
            raise ValueError(f"the shapes of the classes must differ, got {shapes[: self.classes]}")
        for name in shapes:
            if name not in SHAPES:
                raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
        low, high = (_render.check_int("sizes", value, low=2) for value in sizes)
        if low > high or high > self.canvas:
            raise ValueError(f"need 2 <= sizes[0] <= sizes[1] <= canvas, got {sizes}")
        capacity = _render.grid_capacity((self.canvas, self.canvas), high, gap=1)
        if min(self.max_total, self.classes * self.max_per_class) > capacity:
            raise ValueError(
                f"max_total={max_total} shapes of up to {high} px cannot all fit on a {canvas} px canvas "
                f"(at most {capacity})"
            )
        if not noise >= 0:
            raise ValueError(f"`noise` must be >= 0, got {noise}")
        self.noise = float(noise)
        self.seed = int(seed)
        self.sizes = (low, high)
        self.shapes = shapes[: self.classes]
        #: A printable name per class: ``"-"`` for the blank, then the shapes.
        self.class_names = ["-", *self.shapes]
        self.blank = 0
        self.num_classes = self.classes + 1
        self._rng = np.random.default_rng(self.seed)
        # masks[class - 1][size - low][angle index]
        self._masks = [
            [[shape_mask(name, size, angle) for angle in _ANGLES] for size in range(low, high + 1)]
            for name in self.shapes
        ]

    def batch(self, rng: np.random.Generator | int | None, size: int) -> ObjectBatch:
        """``size`` random canvases.

        Parameters
        ----------
        rng : numpy.random.Generator, int or None
            The stream to draw from (advanced in place); an int seeds a new
            one; None uses this object's own stream (seeded by ``seed``).
        size : int
            B.

        Returns
        -------
        ObjectBatch
            ``object_counts[:, k]`` is the number of shapes of class k (column 0 is 0).
        """
        return self._batch(_render.as_generator(rng, self._rng), size)

    def heldout(self, size: int, seed: int = 0) -> ObjectBatch:
        """A fixed held-out set of ``size`` canvases (the same for the same ``(size, seed)``)."""
        return self._batch(_render.stream(seed, _render.HELDOUT_KEY), size)

    def _count_vectors(self, rng: np.random.Generator, size: int) -> np.ndarray:
        counts = rng.integers(0, self.max_per_class, size=(size, self.classes), endpoint=True)
        for _ in range(63):
            over = counts.sum(axis=1) > self.max_total
            if not over.any():
                break
            redraw = rng.integers(0, self.max_per_class, size=(size, self.classes), endpoint=True)
            counts = np.where(over[:, None], redraw, counts)
        for row in np.flatnonzero(counts.sum(axis=1) > self.max_total).tolist():
            while counts[row].sum() > self.max_total:  # a bounded trim: the total drops by one each turn
                counts[row, np.argmax(counts[row])] -= 1
        return counts.astype(np.int64)

    def _batch(self, rng: np.random.Generator, size: int) -> ObjectBatch:
        size = _render.check_int("size", size, low=0)
        images = np.zeros((size, 1, self.canvas, self.canvas), dtype=np.float32)
        low, high = self.sizes
        labels: list[list[int]] = []
        positions: list[list[tuple[int, int]]] = []
        for index, counts in enumerate(self._count_vectors(rng, size)):
            ids = rng.permutation(np.repeat(np.arange(1, self.num_classes), counts))
            sides = rng.integers(low, high, size=ids.shape[0], endpoint=True)
            angles = rng.integers(len(_ANGLES), size=ids.shape[0])
            intensity = rng.uniform(0.6, 1.0, size=ids.shape[0]).astype(np.float32)
            corners = _render.place_boxes(
                rng, np.stack([sides, sides], axis=1), (self.canvas, self.canvas), gap=1
            )
            for label, side, angle, ink, (row, col) in zip(
                ids.tolist(), sides.tolist(), angles.tolist(), intensity, corners.tolist(), strict=True
            ):
                mask = self._masks[label - 1][side - low][angle]
                images[index, 0, row : row + side, col : col + side] = ink * mask
            labels.append(ids.tolist())
            positions.append([(int(row), int(col)) for row, col in corners.tolist()])
        _render.add_noise(images, rng, self.noise)
        return ObjectBatch(images, counts_of(labels, self.num_classes), labels, positions)
