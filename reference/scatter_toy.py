"""The paper's Fig. 2 toy in miniature: glyphs at random, non-overlapping 2D positions, for the FCN.

Each image of ``canvas x canvas`` pixels holds ``min_objects..max_objects``
glyphs of ``glyph x glyph`` pixels. The label is the multiset of their classes
(as per-class counts): ACE with 2D prediction learns to recognise them
regardless of order.

Glyph sources:

- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (classes 1..10
  are the digits 0..9), duplicates removed, split per class into train and
  test images once (from ``seed``), so that :meth:`ScatterToy.heldout` shows
  only glyph images never used for training. Needs scikit-learn (the
  ``reference`` extra); without it the toy falls back to ``"font"`` and says
  so in :attr:`ScatterToy.source`.
- ``"font"``: characters of :data:`~ace_core.reference.text_lines.ALPHABET`
  drawn with Pillow in every available font at random sizes, rotations and
  places within the glyph box; the variants are split into train and test in
  the same way.

Placement is rejection sampling with restarts and a grid fallback
(:func:`~ace_core.reference._render.place_boxes`), so a batch always
terminates, with exactly the drawn number of objects, even at the densest
setting the constructor accepts (``max_objects`` at most the number of grid
cells). Glyphs may touch but never overlap, so each pixel shows at most one
glyph. Images are ``float32`` ``(B, 1, S, S)`` in [0, 1] with Gaussian noise.

:class:`ObjectBatch` is shared with :mod:`ace_core.reference.counting`; its
``object_counts`` has the blank column 0 set to 0, which is what
:func:`ace_core.counts_with_background` fills in::

    counts = ace_core.counts_with_background(batch.object_counts, input_lengths=H * W)

with ``H x W`` the model's output map.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _render
from .text_lines import ALPHABET

__all__ = ["ObjectBatch", "ScatterToy"]

# Drawn variants per class for source="font" (before the train/test split).
_FONT_VARIANTS = 60


class ObjectBatch(NamedTuple):
    """A batch of canvases with objects (all NumPy, on the host)."""

    images: np.ndarray  #: (B, 1, S, S) float32 in [0, 1], ink high
    object_counts: np.ndarray  #: (B, num_classes) int64 objects per class; column 0 (blank) is 0
    labels: list[list[int]]  #: class ids of the objects placed in each image, in placement order
    positions: list[list[tuple[int, int]]]  #: (row, col) of each object's top-left pixel, same order


def counts_of(labels: list[list[int]], num_classes: int) -> np.ndarray:
    """``(B, num_classes)`` int64 counts of the class ids in ``labels`` (column 0 stays 0)."""
    counts = np.zeros((len(labels), num_classes), dtype=np.int64)
    for row, ids in enumerate(labels):
        np.add.at(counts[row], np.asarray(ids, dtype=np.int64), 1)
    return counts


class ScatterToy:
    """Glyphs scattered on a square canvas; the target is their per-class counts.

    Parameters
    ----------
    canvas : int
        S, the image side in pixels.
    glyph : int
        The glyph side in pixels (digits are resized from 8x8 when it differs).
    min_objects, max_objects : int
        The number of glyphs per image is uniform in this range; ``max_objects``
        must not exceed ``(canvas // glyph) ** 2``.
    classes : int
        Object classes (the blank comes on top): at most 10 for digits, 36 for fonts.
    source : {"digits", "font"}
        Where the glyph images come from (see the module docstring).
    noise : float
        Standard deviation of the Gaussian noise (the result is clipped to [0, 1]).
    seed : int
        Seed of the glyph split (and of the font variants) and of this object's own stream.
    test_fraction : float
        Share of each class's glyph images kept for :meth:`heldout`.
    """

    def __init__(
        self,
        *,
        canvas: int = 32,
        glyph: int = 8,
        min_objects: int = 2,
        max_objects: int = 5,
        classes: int = 10,
        source: str = "digits",
        noise: float = 0.05,
        seed: int = 0,
        test_fraction: float = 0.2,
    ) -> None:
        self.canvas = _render.check_int("canvas", canvas)
        self.glyph = _render.check_int("glyph", glyph)
        self.min_objects = _render.check_int("min_objects", min_objects, low=0)
        self.max_objects = _render.check_int("max_objects", max_objects, low=0)
        if self.min_objects > self.max_objects:
            raise ValueError(f"need min_objects <= max_objects, got {min_objects} > {max_objects}")
        if self.glyph > self.canvas:
            raise ValueError(f"a {glyph} px glyph does not fit on a {canvas} px canvas")
        capacity = _render.grid_capacity((self.canvas, self.canvas), self.glyph)
        if self.max_objects > capacity:
            raise ValueError(
                f"max_objects={max_objects} glyphs of {glyph} px cannot all fit on a {canvas} px canvas "
                f"(at most {capacity})"
            )
        if source not in ("digits", "font"):
            raise ValueError(f"`source` must be 'digits' or 'font', got {source!r}")
        limit = 10 if source == "digits" else len(ALPHABET)
        self.classes = _render.check_int("classes", classes)
        if self.classes > limit:
            raise ValueError(f"source={source!r} has at most {limit} classes, got {classes}")
        if not noise >= 0:
            raise ValueError(f"`noise` must be >= 0, got {noise}")
        self.noise = float(noise)
        self.seed = int(seed)
        self.blank = 0
        self.num_classes = self.classes + 1
        #: The character shown by class k is ``alphabet[k - 1]``.
        self.alphabet = ALPHABET[: self.classes]
        #: A printable name per class: ``"-"`` for the blank, then the characters.
        self.class_names = ["-", *self.alphabet]
        self._rng = np.random.default_rng(self.seed)
        split_rng = _render.stream(self.seed, _render.SPLIT_KEY)
        if source == "digits":
            try:
                images, digits = _render.load_digit_glyphs()
            except ImportError:
                source = "font"  # documented fallback: rendered digits instead of handwritten ones
            else:
                keep = digits < self.classes
                images, labels = images[keep], digits[keep] + 1
                if self.glyph != 8:
                    images = np.clip(_render.resize_bilinear(images, self.glyph, self.glyph), 0, 1)
        if source == "font":
            images, labels = self._font_glyphs()
        #: The glyph source actually used ("font" when "digits" was asked for without scikit-learn).
        self.source = source
        #: Glyph images of the training batches and of the held-out sets (disjoint).
        self.train_glyphs, self.test_glyphs = _render.split_glyphs(images, labels, test_fraction, split_rng)

    def _font_glyphs(self) -> tuple[np.ndarray, np.ndarray]:
        """``_FONT_VARIANTS`` drawn variants of each class's character, each in a ``glyph²`` box."""
        rng = _render.stream(self.seed, _render.BANK_KEY)
        fonts = _render.resolve_fonts(None, self.alphabet)
        images, labels = [], []
        for label, char in enumerate(self.alphabet, start=1):
            for _ in range(_FONT_VARIANTS):
                font = fonts[int(rng.integers(len(fonts)))]
                ink = _render.render_text(char, font, 4 * self.glyph, rotation=rng.uniform(-12, 12))
                box = _render.fit_in_box(
                    ink, self.glyph, scale=rng.uniform(0.75, 1.0), anchor=tuple(rng.random(2))
                )
                images.append(np.clip(box, 0, 1))
                labels.append(label)
        return np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64)

    def batch(self, rng: np.random.Generator | int | None, size: int) -> ObjectBatch:
        """``size`` random training canvases.

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
        """
        return self._batch(_render.as_generator(rng, self._rng), size, self.train_glyphs)

    def heldout(self, size: int, seed: int = 0) -> ObjectBatch:
        """A fixed held-out set of ``size`` canvases built only from the held-out glyph images.

        The same for the same ``(size, seed)``; it draws from a child stream of
        ``seed`` that no plain ``default_rng(seed)`` produces.
        """
        return self._batch(_render.stream(seed, _render.HELDOUT_KEY), size, self.test_glyphs)

    def _batch(self, rng: np.random.Generator, size: int, bank: _render.GlyphBank) -> ObjectBatch:
        size = _render.check_int("size", size, low=0)
        images = np.zeros((size, 1, self.canvas, self.canvas), dtype=np.float32)
        numbers = rng.integers(self.min_objects, self.max_objects, size=size, endpoint=True)
        labels: list[list[int]] = []
        positions: list[list[tuple[int, int]]] = []
        box = np.array([self.glyph, self.glyph])
        for index, number in enumerate(numbers.tolist()):
            picks = rng.integers(bank.labels.shape[0], size=number)
            corners = _render.place_boxes(rng, np.tile(box, (number, 1)), (self.canvas, self.canvas))
            for pick, (row, col) in zip(picks.tolist(), corners.tolist(), strict=True):
                images[index, 0, row : row + self.glyph, col : col + self.glyph] = bank.images[pick]
            labels.append(bank.labels[picks].tolist())
            positions.append([(int(row), int(col)) for row, col in corners.tolist()])
        _render.add_noise(images, rng, self.noise)
        return ObjectBatch(images, counts_of(labels, self.num_classes), labels, positions)
