"""Seeded text lines of the paper's scene-text alphabet (blank + 0-9 + A-Z, 37 classes), for the CRNN.

Each line is a random string of ``min_length..max_length`` characters drawn
with Pillow: a random font (Pillow's built-in scalable Aileron plus the system
fonts a glob finds, see :func:`~ace_core.reference._render.system_fonts`), a
random size, a slight shear and rotation, a random ink intensity and a random
offset, then Gaussian noise. The line always fits: when a drawn string is
larger than the canvas less a one-pixel margin, it is drawn again smaller, so
no ink is ever cut at the border. Images are ``float32`` ``(B, 1, H, W)`` in
[0, 1], ink high.

The training stream is whatever generator the caller passes to
:meth:`TextLines.batch`; :meth:`TextLines.heldout` draws from a child stream
of its seed that no plain ``default_rng(seed)`` ever produces. Rendered text
has no glyph split: a held-out line is new text in a new rendering, with the
same fonts. The set of fonts depends on the machine (the glob): outputs are
deterministic for a seed on one machine, not across machines with other fonts.

Pillow (>= 10.1, the ``reference`` extra) is imported when the first line is
drawn, not when this module is imported.

Examples
--------
>>> from ace_core.reference.text_lines import ALPHABET, TextLines
>>> task = TextLines()  # fonts are looked up (and Pillow imported) at the first drawing
>>> task.num_classes, task.encode("A10Z"), task.decode([11, 2, 1, 0, 36])
(37, [11, 2, 1, 36], 'A10Z')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _render

__all__ = ["ALPHABET", "BLANK", "MARGIN", "LineTask", "TextBatch", "TextLines"]

#: The characters of classes 1..36 (the paper's scene-text alphabet); class 0 is the blank.
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The blank class.
BLANK = 0
#: Pixels of background kept around the ink on every side (text lines and digit strings).
MARGIN = 1


class TextBatch(NamedTuple):
    """A batch of lines (all NumPy, on the host)."""

    images: np.ndarray  #: (B, 1, H, W) float32 in [0, 1], ink high
    targets: np.ndarray  #: (B, max_length) int64 class ids, padded with the blank 0
    target_lengths: np.ndarray  #: (B,) int64
    texts: list[str]  #: the strings drawn


class LineTask:
    """What text lines and digit strings share: label sampling, batching, held-out sets, the codec."""

    alphabet: str
    blank: int = BLANK
    height: int
    width: int
    min_length: int
    max_length: int
    noise: float
    seed: int

    def _setup(self, height: int, width: int, min_length: int, max_length: int, noise: float, seed: int):
        self.height = _render.check_int("height", height)
        self.width = _render.check_int("width", width)
        self.min_length = _render.check_int("min_length", min_length, low=0)
        self.max_length = _render.check_int("max_length", max_length)
        if self.min_length > self.max_length:
            raise ValueError(f"need min_length <= max_length, got {min_length} > {max_length}")
        if not noise >= 0:
            raise ValueError(f"`noise` must be >= 0, got {noise}")
        self.noise = float(noise)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def num_classes(self) -> int:
        """C, the blank included."""
        return len(self.alphabet) + 1

    @property
    def class_names(self) -> list[str]:
        """A printable name per class: ``"-"`` for the blank, then the characters."""
        return ["-", *self.alphabet]

    def encode(self, text: str) -> list[int]:
        """Class ids of ``text`` (``alphabet[k - 1]`` is class ``k``); ValueError for other characters."""
        return _render.encode(text, self.alphabet)

    def decode(self, ids: Iterable[Any]) -> str:
        """The text of class ids, skipping blanks (0); ValueError for ids outside ``[0, C)``."""
        return _render.decode(ids, self.alphabet)

    def _ink(self, text: str, rng: np.random.Generator, heldout: bool) -> np.ndarray:
        raise NotImplementedError

    def render(self, text: str, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """One line showing ``text`` (training rendering), noise included: float32 ``(H, W)`` in [0, 1].

        ``rng``: a generator, an int seed, or None for this object's own stream (seeded by ``seed``).
        """
        self.encode(text)  # reject characters outside the alphabet
        rng = _render.as_generator(rng, self._rng)
        image = self._ink(text, rng, heldout=False)
        return _render.add_noise(image, rng, self.noise)

    def batch(self, rng: np.random.Generator | int | None, size: int) -> TextBatch:
        """``size`` random training lines.

        Parameters
        ----------
        rng : numpy.random.Generator, int or None
            The stream to draw from (advanced in place); an int seeds a new
            one; None uses this object's own stream (seeded by ``seed``).
        size : int
            B.

        Returns
        -------
        TextBatch
            ``images (B, 1, H, W)``, ``targets (B, max_length)``,
            ``target_lengths (B,)``, ``texts``.
        """
        return self._batch(_render.as_generator(rng, self._rng), size, heldout=False)

    def heldout(self, size: int, seed: int = 0) -> TextBatch:
        """A fixed held-out set of ``size`` lines: the same for the same ``(size, seed)``.

        It draws from a child stream of ``seed`` (never equal to ``default_rng(seed)``)
        and, where the task has a glyph split, from the held-out glyph images only.
        """
        return self._batch(_render.stream(seed, _render.HELDOUT_KEY), size, heldout=True)

    def _batch(self, rng: np.random.Generator, size: int, heldout: bool) -> TextBatch:
        size = _render.check_int("size", size, low=0)
        lengths = rng.integers(self.min_length, self.max_length, size=size, endpoint=True, dtype=np.int64)
        ids = rng.integers(1, self.num_classes, size=(size, self.max_length), dtype=np.int64)
        targets = np.where(np.arange(self.max_length)[None, :] < lengths[:, None], ids, self.blank)
        texts = [self.decode(row[:length]) for row, length in zip(targets, lengths.tolist(), strict=True)]
        images = np.zeros((size, 1, self.height, self.width), dtype=np.float32)
        for index, text in enumerate(texts):
            images[index, 0] = self._ink(text, rng, heldout)
        _render.add_noise(images, rng, self.noise)
        return TextBatch(images, targets, lengths, texts)


class TextLines(LineTask):
    """Random lines over :data:`ALPHABET` drawn with Pillow fonts (37 classes, blank 0).

    Parameters
    ----------
    height, width : int
        H and W of the images.
    min_length, max_length : int
        String lengths are uniform in ``[min_length, max_length]``; targets are padded to ``max_length``.
    fonts : sequence of str, optional
        Font sources: file paths or :data:`~ace_core.reference._render.DEFAULT_FONT`
        (Pillow's Aileron). Default: Aileron plus every system font the glob
        finds that draws all of the alphabet.
    noise : float
        Standard deviation of the Gaussian noise (the result is clipped to [0, 1]).
    seed : int
        Seed of this object's own stream (used when ``rng=None``).
    size_range : (float, float)
        Font sizes in pixels are uniform in ``size_range * height`` (then shrunk to fit).
    max_shear, max_rotation : float
        Shear (pixels per row) and rotation (degrees) are uniform in ``±`` these.
    """

    def __init__(
        self,
        *,
        height: int = 32,
        width: int = 128,
        min_length: int = 4,
        max_length: int = 8,
        fonts: Sequence[str] | str | None = None,
        noise: float = 0.05,
        seed: int = 0,
        size_range: tuple[float, float] = (0.55, 0.95),
        max_shear: float = 0.2,
        max_rotation: float = 2.0,
    ) -> None:
        self._setup(height, width, min_length, max_length, noise, seed)
        if self.height < 8 + 2 * MARGIN or self.width < 8 + 2 * MARGIN:
            raise ValueError(f"a {height}x{width} canvas is too small to draw text on")
        if not 0 < size_range[0] <= size_range[1]:
            raise ValueError(f"need 0 < size_range[0] <= size_range[1], got {size_range}")
        self.alphabet = ALPHABET
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.max_shear = float(max_shear)
        self.max_rotation = float(max_rotation)
        self._font_request = fonts
        self._fonts: list[str] | None = None

    def fonts(self) -> list[str]:
        """The font sources in use: ``"pillow:default"`` (Aileron) and font file paths (needs Pillow)."""
        if self._fonts is None:
            self._fonts = _render.resolve_fonts(self._font_request, ALPHABET)
        return list(self._fonts)

    def _ink(self, text: str, rng: np.random.Generator, heldout: bool) -> np.ndarray:
        """The clean line (no noise) with ``text`` at a random place, style and size."""
        fonts = self._fonts if self._fonts is not None else self.fonts()
        font = fonts[int(rng.integers(len(fonts)))]
        size = rng.uniform(*self.size_range) * self.height
        shear = rng.uniform(-self.max_shear, self.max_shear)
        rotation = rng.uniform(-self.max_rotation, self.max_rotation)
        intensity = np.float32(rng.uniform(0.6, 1.0))
        anchor = rng.random(2)
        canvas = np.zeros((self.height, self.width), dtype=np.float32)
        if not text:
            return canvas
        room_h, room_w = self.height - 2 * MARGIN, self.width - 2 * MARGIN
        ink = _render.render_text(text, font, max(4, round(size)), shear=shear, rotation=rotation)
        # Too large: draw it again at the size that fits (hinting makes the fit approximate, so retry).
        for _ in range(4):
            if ink.shape[0] <= room_h and ink.shape[1] <= room_w:
                break
            size *= 0.97 * min(room_h / ink.shape[0], room_w / ink.shape[1])
            ink = _render.render_text(text, font, max(4, int(size)), shear=shear, rotation=rotation)
        if ink.shape[0] > room_h or ink.shape[1] > room_w:  # a last resort that cannot fail
            scale = min(room_h / ink.shape[0], room_w / ink.shape[1])
            ink = _render.resize_bilinear(
                ink, max(1, int(ink.shape[0] * scale)), max(1, int(ink.shape[1] * scale))
            )
        top = MARGIN + int(anchor[0] * (room_h - ink.shape[0] + 1))
        left = MARGIN + int(anchor[1] * (room_w - ink.shape[1] + 1))
        canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = intensity * ink
        return canvas
