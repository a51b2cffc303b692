"""Seeded toy recognition data: strips of noisy glyphs, one column per step.

A tiny sequence-recognition task for examples and tests that must train in
seconds on a CPU. Each non-blank class has a fixed binary "glyph" of
``height x glyph_width`` pixels (the font, from ``font_seed``); a strip places
the glyphs of a label left to right with at least one empty column between
them, adds Gaussian noise, and is read column by column: step ``t`` of the
model's input is column ``t`` of the strip, ``height`` values. Strips have
random widths (the label plus random gaps); columns beyond a strip's width are
zero padding and ``input_lengths`` says where each strip ends.

Everything is NumPy on the host (``float32`` images, ``int64`` labels), as in
:mod:`ace_core.bench.data`.

Examples
--------
>>> from ace_core.reference.toy_sequences import glyph_strips
>>> data = glyph_strips(4, classes=5, steps=20, seed=0)
>>> data.images.shape, data.images.dtype.name    # (B, T, height)
((4, 20, 8), 'float32')
>>> data.labels.shape                            # padded to max_length with the blank
(4, 4)
>>> bool((data.label_lengths * 4 - 1 <= data.input_lengths).all())  # every label fits
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["GlyphStrips", "glyph_font", "glyph_strips"]


class GlyphStrips(NamedTuple):
    """A batch of glyph strips (all NumPy)."""

    images: np.ndarray  #: (B, T, height) float32, column t of each strip; zeros beyond input_lengths
    labels: np.ndarray  #: (B, S) int64, padded with ``blank`` beyond ``label_lengths``
    label_lengths: np.ndarray  #: (B,) int64
    input_lengths: np.ndarray  #: (B,) int64, the width of each strip in columns
    blank: int  #: the blank class (no glyph)


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def glyph_font(
    classes: int, *, height: int = 8, glyph_width: int = 3, blank: int = 0, seed: int = 0
) -> np.ndarray:
    """One distinct random binary glyph per non-blank class; the blank's glyph is empty.

    Parameters
    ----------
    classes : int
        C, the blank included (at least 2).
    height, glyph_width : int
        Glyph size in pixels.
    blank : int
        The class without a glyph.
    seed : int
        Seed of the font (independent of the strips' seed, so train and test share it).

    Returns
    -------
    numpy.ndarray
        Shape ``(classes, height, glyph_width)``, ``float32`` zeros and ones.
    """
    classes = _check_positive("classes", classes)
    if classes < 2 or not 0 <= blank < classes:
        raise ValueError(f"need classes >= 2 and blank in [0, classes), got {classes}, {blank}")
    pixels = _check_positive("height", height) * _check_positive("glyph_width", glyph_width)
    if 2**pixels - 1 < classes - 1:
        raise ValueError(f"{pixels} pixels cannot hold {classes - 1} distinct non-empty glyphs")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    glyphs: list[np.ndarray] = []
    seen: set[bytes] = set()
    while len(glyphs) < classes - 1:  # redraw the rare duplicate or empty glyph
        glyph = (rng.random(pixels) < 0.5).astype(np.float32)
        if glyph.any() and glyph.tobytes() not in seen:
            seen.add(glyph.tobytes())
            glyphs.append(glyph)
    font = np.zeros((classes, pixels), dtype=np.float32)
    font[[k for k in range(classes) if k != blank]] = np.stack(glyphs)
    return font.reshape(classes, height, glyph_width)


def glyph_strips(
    batch: int,
    *,
    classes: int = 6,
    steps: int = 32,
    height: int = 8,
    glyph_width: int = 3,
    min_length: int = 1,
    max_length: int = 4,
    noise: float = 0.3,
    blank: int = 0,
    font_seed: int = 0,
    seed: int = 0,
) -> GlyphStrips:
    """Seeded strips of noisy glyphs and their labels.

    Parameters
    ----------
    batch : int
        B.
    classes : int
        C, the blank included.
    steps : int
        T, the padded strip width in columns.
    height, glyph_width : int
        Glyph size (see :func:`glyph_font`); ``height`` is the feature size of a step.
    min_length, max_length : int
        Label lengths are uniform in ``[min_length, max_length]``; ``max_length``
        glyphs with one-column gaps must fit in ``steps``.
    noise : float
        Standard deviation of the Gaussian noise added inside each strip.
    blank : int
        The blank class; never in a label.
    font_seed, seed : int
        Seeds of the font and of the strips.

    Returns
    -------
    GlyphStrips
        Images ``(B, T, height)``, labels ``(B, max_length)`` and the lengths.
    """
    batch = _check_positive("batch", batch)
    steps = _check_positive("steps", steps)
    if not 0 <= min_length <= max_length:
        raise ValueError(f"need 0 <= min_length <= max_length, got {min_length}, {max_length}")
    if max_length * (glyph_width + 1) - 1 > steps:
        raise ValueError(
            f"{max_length} glyphs of width {glyph_width} with gaps do not fit in {steps} columns"
        )
    font = glyph_font(classes, height=height, glyph_width=glyph_width, blank=blank, seed=font_seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 104729]))
    symbols = np.array([k for k in range(classes) if k != blank])

    images = np.zeros((batch, steps, height), dtype=np.float32)
    labels = np.full((batch, max_length), blank, dtype=np.int64)
    label_lengths = rng.integers(min_length, max_length, size=batch, endpoint=True, dtype=np.int64)
    input_lengths = np.zeros(batch, dtype=np.int64)
    for b, length in enumerate(label_lengths.tolist()):
        label = rng.choice(symbols, size=length)
        labels[b, :length] = label
        needed = max(length * (glyph_width + 1) - 1, 1)
        width = int(rng.integers(needed, steps, endpoint=True))
        # Spread the spare columns over the length + 1 gaps (the inner ones keep one column).
        spare = rng.multinomial(width - needed, np.full(length + 1, 1 / (length + 1)))
        column = int(spare[0])
        for i, symbol in enumerate(label.tolist()):
            images[b, column : column + glyph_width] = font[symbol].T
            column += glyph_width + 1 + int(spare[i + 1])
        images[b, :width] += rng.normal(scale=noise, size=(width, height)).astype(np.float32)
        input_lengths[b] = width
    return GlyphStrips(images, labels, label_lengths, input_lengths, blank)
