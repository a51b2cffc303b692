"""Seeded strings of handwritten digits (scikit-learn's ``load_digits``), with the text-line interface.

A line shows ``min_length..max_length`` 8x8 digit images, upscaled (bilinear)
to ``glyph`` pixels and laid left to right with random gaps of
``0..max_gap`` pixels, random vertical jitter, a random ink intensity and a
random horizontal offset, then Gaussian noise. Classes 1..10 are the digits
0..9 (``alphabet = "0123456789"``), 0 is the blank.

The digit images (duplicates removed) are split per class into train and test
images once, from ``seed``, *before* any string is composed: training lines
use train images only and :meth:`DigitStrings.heldout` test images only, so
held-out accuracy measures generalisation to unseen handwriting.

Needs scikit-learn (the ``reference`` extra): the constructor raises an
ImportError saying how to install it. Pillow is not needed.
"""

from __future__ import annotations

import numpy as np

from . import _render
from .text_lines import MARGIN, LineTask, TextBatch

__all__ = ["DIGITS", "DigitStrings", "TextBatch"]

#: The characters of classes 1..10; class 0 is the blank.
DIGITS = "0123456789"


class DigitStrings(LineTask):
    """Lines of handwritten digits (11 classes, blank 0) with a train/test split of the digit images.

    Parameters
    ----------
    height, width : int
        H and W of the images.
    min_length, max_length : int
        String lengths are uniform in ``[min_length, max_length]``; targets are padded to ``max_length``.
    noise : float
        Standard deviation of the Gaussian noise (the result is clipped to [0, 1]).
    seed : int
        Seed of the train/test split of the digit images and of this object's own stream.
    glyph : int, optional
        Side of a digit in pixels. Default: the largest that fits ``max_length``
        digits with the widest gaps in ``width`` and is at most 3/4 of ``height``.
    max_gap : int
        Gaps between digits are uniform in ``0..max_gap`` pixels.
    test_fraction : float
        Share of each digit's images kept for :meth:`heldout`.
    """

    def __init__(
        self,
        *,
        height: int = 32,
        width: int = 128,
        min_length: int = 4,
        max_length: int = 8,
        noise: float = 0.05,
        seed: int = 0,
        glyph: int | None = None,
        max_gap: int = 2,
        test_fraction: float = 0.2,
    ) -> None:
        self._setup(height, width, min_length, max_length, noise, seed)
        self.alphabet = DIGITS
        self.max_gap = _render.check_int("max_gap", max_gap, low=0)
        room = self.width - 2 * MARGIN - (self.max_length - 1) * self.max_gap
        if glyph is None:
            glyph = min(room // self.max_length, (3 * self.height) // 4)
        self.glyph = _render.check_int("glyph", glyph, low=4)
        if self.glyph * self.max_length > room or self.glyph > self.height - 2 * MARGIN:
            raise ValueError(
                f"{max_length} digits of {self.glyph} px with gaps up to {max_gap} px do not fit "
                f"a {height}x{width} line"
            )
        images, digits = _render.load_digit_glyphs()  # ImportError with the install hint without sklearn
        images = np.clip(_render.resize_bilinear(images, self.glyph, self.glyph), 0, 1)
        split_rng = _render.stream(self.seed, _render.SPLIT_KEY)
        #: Glyph images of the training lines and of the held-out lines (disjoint), classes 1..10.
        self.train_glyphs, self.test_glyphs = _render.split_glyphs(
            images, digits + 1, test_fraction, split_rng
        )
        # Row indices of each class in each bank, to pick a random image of a given digit.
        self._members = {
            split: [np.flatnonzero(bank.labels == label) for label in range(self.num_classes)]
            for split, bank in (("train", self.train_glyphs), ("test", self.test_glyphs))
        }

    def _ink(self, text: str, rng: np.random.Generator, heldout: bool) -> np.ndarray:
        """The clean line (no noise) with ``text`` in random handwritten digits."""
        split = "test" if heldout else "train"
        bank = self.test_glyphs if heldout else self.train_glyphs
        ids = self.encode(text)
        count = len(ids)
        gaps = rng.integers(0, self.max_gap, size=max(count - 1, 0), endpoint=True)
        jitter = rng.integers(-2, 2, size=count, endpoint=True)
        picks = [int(rng.choice(self._members[split][label])) for label in ids]
        intensity = np.float32(rng.uniform(0.7, 1.0))
        anchor = rng.random(2)
        canvas = np.zeros((self.height, self.width), dtype=np.float32)
        if not count:
            return canvas
        span = count * self.glyph + int(gaps.sum())
        room_h = self.height - 2 * MARGIN
        left = MARGIN + int(anchor[1] * (self.width - 2 * MARGIN - span + 1))
        base = MARGIN + int(anchor[0] * (room_h - self.glyph + 1))
        for index, pick in enumerate(picks):
            top = int(np.clip(base + jitter[index], MARGIN, self.height - MARGIN - self.glyph))
            canvas[top : top + self.glyph, left : left + self.glyph] = intensity * bank.images[pick]
            left += self.glyph + (int(gaps[index]) if index < count - 1 else 0)
        return canvas
