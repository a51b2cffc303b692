"""Shared helpers of the reference data generators: random streams, fonts, resizing, placement.

Everything here works on NumPy arrays on the host. Pillow (the ``reference``
extra) is imported only inside the font functions, and scikit-learn only
inside :func:`load_digit_glyphs`, so that importing a generator module costs
neither.

Seeds
-----
A caller's training stream is usually ``numpy.random.default_rng(seed)``. The
held-out sets and the glyph splits draw from child streams of the same seed
(``SeedSequence(seed, spawn_key=(key,))``) that never coincide with it, so a
held-out set is independent of every training batch drawn from any plain seed.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_FONT",
    "FONT_GLOBS",
    "GlyphBank",
    "as_generator",
    "stream",
    "add_noise",
    "require_pillow",
    "system_fonts",
    "resolve_fonts",
    "load_font",
    "render_text",
    "resize_bilinear",
    "fit_in_box",
    "grid_capacity",
    "place_boxes",
    "load_digit_glyphs",
    "split_glyphs",
    "encode",
    "decode",
]

#: The name under which Pillow's built-in scalable font (Aileron, Pillow >= 10.1) is listed.
DEFAULT_FONT = "pillow:default"
#: Where :func:`system_fonts` looks for TrueType/OpenType fonts (recursive globs).
FONT_GLOBS = (
    "/usr/share/fonts/**/*.ttf",
    "/usr/share/fonts/**/*.otf",
    "/usr/local/share/fonts/**/*.ttf",
    "/usr/local/share/fonts/**/*.otf",
)
# Fonts whose letters are not plain text faces (math alphabets, hairline weights that vanish at 32 px).
_EXCLUDED_FONT_WORDS = ("math", "symbol", "emoji", "extralight", "thin", "hairline", "dingbat")

# Child-stream keys (see the module docstring); arbitrary but fixed forever.
HELDOUT_KEY = 0x4E1D
SPLIT_KEY = 0x5B17
BANK_KEY = 0xBA4C


# ---------------------------------------------------------------------------
# Random streams


def stream(seed: int, key: int) -> np.random.Generator:
    """The child stream ``key`` of ``seed``, independent of ``default_rng(seed)``.

    Examples
    --------
    >>> a = stream(0, HELDOUT_KEY).random()
    >>> a == stream(0, HELDOUT_KEY).random(), a == np.random.default_rng(0).random()
    (True, False)
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(key),)))


def as_generator(rng: np.random.Generator | int | None, fallback: np.random.Generator) -> np.random.Generator:
    """``rng`` itself, ``default_rng(rng)`` for an int, or ``fallback`` (an object's own stream) for None."""
    if rng is None:
        return fallback
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"`rng` must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def add_noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """``clip(images + sigma * N(0, 1), 0, 1)`` in float32, in place; ``sigma = 0`` only clips."""
    if sigma > 0:
        images += np.float32(sigma) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0.0, 1.0, out=images)


def check_int(name: str, value: Any, low: int = 1) -> int:
    """``value`` as an int, or a ValueError if it is not an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# Labels


def encode(text: str, alphabet: str) -> list[int]:
    """Class ids of ``text``: character ``alphabet[k - 1]`` is class ``k`` (0 is the blank).

    Examples
    --------
    >>> encode("B10", "0123456789AB")
    [12, 2, 1]
    """
    ids = []
    for position, char in enumerate(text):
        index = alphabet.find(char)
        if index < 0:
            raise ValueError(f"character {char!r} at position {position} is not in the alphabet {alphabet!r}")
        ids.append(index + 1)
    return ids


def decode(ids: Iterable[Any], alphabet: str) -> str:
    """The text of class ids; blanks (0) are skipped.

    Examples
    --------
    >>> decode([12, 0, 2, 1], "0123456789AB")
    'B10'
    """
    chars = []
    for value in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1).tolist():
        if isinstance(value, bool) or int(value) != value or not 0 <= value <= len(alphabet):
            raise ValueError(f"class id {value!r} is outside [0, {len(alphabet)}]")
        if value:
            chars.append(alphabet[int(value) - 1])
    return "".join(chars)


# ---------------------------------------------------------------------------
# Fonts (Pillow, imported lazily)


def require_pillow() -> tuple[Any, Any, Any]:
    """``(PIL.Image, PIL.ImageDraw, PIL.ImageFont)``, or an ImportError that says how to get them."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rendering text needs Pillow >= 10.1: pip install 'ace-core[reference]' (or pip install pillow)"
        ) from error
    return Image, ImageDraw, ImageFont


def system_fonts(patterns: Sequence[str] = FONT_GLOBS) -> list[str]:
    """Font files found by the recursive globs ``patterns``, sorted, without math/symbol/hairline faces."""
    found = set()
    for pattern in patterns:
        for path in glob.glob(os.path.expanduser(pattern), recursive=True):
            name = os.path.basename(path).lower()
            if not any(word in name for word in _EXCLUDED_FONT_WORDS):
                found.add(os.path.realpath(path))
    return sorted(found)


@functools.lru_cache(maxsize=512)
def load_font(source: str, size: int) -> Any:
    """The Pillow font ``source`` (:data:`DEFAULT_FONT` or a file path) at ``size`` px, cached."""
    _, _, image_font = require_pillow()
    if source == DEFAULT_FONT:
        font = image_font.load_default(size=size)
        if not isinstance(font, image_font.FreeTypeFont):  # pragma: no cover - Pillow < 10.1 or no FreeType
            raise ImportError("Pillow's scalable default font needs Pillow >= 10.1 built with FreeType")
        return font
    return image_font.truetype(source, size)


@functools.lru_cache(maxsize=256)
def covers(source: str, chars: str) -> bool:
    """Whether ``source`` draws every character of ``chars`` (none falls back to the missing-glyph box)."""
    try:
        font = load_font(source, 24)
    except OSError:
        return False
    missing = font.getmask("\U0010fffd")  # a private-use code point: the font's .notdef glyph
    missing = (missing.size, bytes(missing))
    for char in chars:
        mask = font.getmask(char)
        if mask.getbbox() is None or (mask.size, bytes(mask)) == missing:
            return False
    return True


def resolve_fonts(fonts: Sequence[str] | str | None, chars: str) -> list[str]:
    """The font sources to draw ``chars`` with.

    ``None``: Pillow's default font plus every :func:`system_fonts` file that
    draws all of ``chars``. Otherwise the given sources (:data:`DEFAULT_FONT`
    or paths), each of which must draw all of ``chars``.
    """
    if fonts is None:
        return [DEFAULT_FONT] + [path for path in system_fonts() if covers(path, chars)]
    sources = [fonts] if isinstance(fonts, str) else list(fonts)
    if not sources:
        raise ValueError("`fonts` is empty")
    for source in sources:
        if source != DEFAULT_FONT and not os.path.isfile(source):
            raise ValueError(f"font file not found: {source!r}")
        if not covers(source, chars):
            raise ValueError(f"font {source!r} cannot draw every character of {chars!r}")
    return sources


def render_text(
    text: str, source: str, size: int, *, shear: float = 0.0, rotation: float = 0.0
) -> np.ndarray:
    """``text`` drawn white on black, sheared and rotated, cropped to its ink: float32 ``(h, w)`` in [0, 1].

    ``shear`` moves row ``y`` right by ``-shear * y`` pixels (positive leans the
    text right); ``rotation`` is in degrees, counter-clockwise.
    """
    image_mod, draw_mod, _ = require_pillow()
    font = load_font(source, int(size))
    left, top, right, bottom = font.getbbox(text)
    pad = 2
    image = image_mod.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    draw_mod.Draw(image).text((pad - left, pad - top), text, fill=255, font=font)
    if shear:
        width, height = image.size
        extra = int(np.ceil(abs(shear) * height))
        # Output (x, y) samples input (x + shear * y - offset, y).
        offset = extra if shear > 0 else 0
        image = image.transform(
            (width + extra, height),
            image_mod.Transform.AFFINE,
            (1.0, shear, -offset, 0.0, 1.0, 0.0),
            resample=image_mod.Resampling.BILINEAR,
        )
    if rotation:
        image = image.rotate(rotation, resample=image_mod.Resampling.BILINEAR, expand=True)
    box = image.getbbox()
    if box is None:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(image.crop(box), dtype=np.float32) / np.float32(255.0)


# ---------------------------------------------------------------------------
# Resizing (pure NumPy)


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` linear interpolation weights, pixel centres aligned (as Pillow's BILINEAR)."""
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    centres = np.clip(centres, 0, size_in - 1)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = centres - low
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes of ``images`` to ``(height, width)``, float32.

    Examples
    --------
    >>> resize_bilinear(np.ones((2, 8, 8)), 16, 12).shape
    (2, 16, 12)
    """
    images = np.asarray(images, dtype=np.float64)
    rows = _interpolation_matrix(images.shape[-2], height)
    cols = _interpolation_matrix(images.shape[-1], width)
    return (rows @ images @ cols.T).astype(np.float32)


def fit_in_box(
    image: np.ndarray, box: int, scale: float = 1.0, anchor: tuple[float, float] = (0.5, 0.5)
) -> np.ndarray:
    """``image`` resized (aspect kept) to a longer side of ``round(scale * box)``, on a ``box²`` canvas.

    ``anchor`` places it in the free space: (0, 0) top left, (0.5, 0.5) centred.
    """
    height, width = image.shape
    longest = max(1, min(box, round(scale * box)))
    new_h = max(1, round(height * longest / max(height, width)))
    new_w = max(1, round(width * longest / max(height, width)))
    resized = resize_bilinear(image, new_h, new_w)
    canvas = np.zeros((box, box), dtype=np.float32)
    top = round(anchor[0] * (box - new_h))
    left = round(anchor[1] * (box - new_w))
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


# ---------------------------------------------------------------------------
# Non-overlapping placement


def grid_capacity(canvas: tuple[int, int], cell: int, gap: int = 0) -> int:
    """How many ``cell``-sized boxes a regular grid with ``gap`` pixels between boxes fits on ``canvas``."""
    return ((canvas[0] + gap) // (cell + gap)) * ((canvas[1] + gap) // (cell + gap))


def place_boxes(
    rng: np.random.Generator,
    sizes: np.ndarray,
    canvas: tuple[int, int],
    *,
    gap: int = 0,
    tries: int = 64,
    restarts: int = 8,
) -> np.ndarray:
    """Top-left corners ``(k, 2)`` (row, col) of boxes ``sizes`` ``(k, 2)`` that lie inside ``canvas`` and
    are at least ``gap`` pixels apart (``gap = 0``: they may touch, never overlap).

    Rejection sampling: each box draws ``tries`` candidate corners at once and
    takes the first that clears the boxes already placed; if one finds none,
    the image starts over (``restarts`` times, largest boxes first). Should
    all fail (a dense canvas), the boxes go into random cells of a regular grid
    of the largest box, which always succeeds when ``k`` does not exceed
    :func:`grid_capacity` (callers check that once, up front). So it always
    terminates, after at most ``restarts * k`` vectorized steps.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    count = sizes.shape[0]
    out = np.zeros((count, 2), dtype=np.int64)
    if count == 0:
        return out
    order = np.argsort(-sizes.prod(axis=1), kind="stable")
    heights, widths = sizes[order, 0], sizes[order, 1]
    # Free range of each box's corner; every candidate of a restart comes from one draw.
    spans = np.stack([canvas[0] - heights + 1, canvas[1] - widths + 1])[:, :, None]
    for _ in range(restarts):
        candidates = (rng.random((2, count, tries)) * spans).astype(np.int64)  # (row/col, box, try)
        tops = np.empty(count, dtype=np.int64)
        lefts = np.empty(count, dtype=np.int64)
        for step in range(count):
            rows, cols = candidates[0, step], candidates[1, step]
            if step:
                top, left = tops[None, :step], lefts[None, :step]
                apart = (
                    (rows[:, None] + (heights[step] + gap) <= top)
                    | (top + (heights[None, :step] + gap) <= rows[:, None])
                    | (cols[:, None] + (widths[step] + gap) <= left)
                    | (left + (widths[None, :step] + gap) <= cols[:, None])
                )
                hit = np.flatnonzero(apart.all(axis=1))
                if hit.size == 0:
                    break
                first = hit[0]
            else:
                first = 0
            tops[step], lefts[step] = rows[first], cols[first]
        else:
            out[order, 0], out[order, 1] = tops, lefts
            return out
    return _grid_placement(rng, sizes, canvas, gap)


def _grid_placement(
    rng: np.random.Generator, sizes: np.ndarray, canvas: tuple[int, int], gap: int
) -> np.ndarray:
    cell = int(sizes.max())
    grid_rows = (canvas[0] + gap) // (cell + gap)
    grid_cols = (canvas[1] + gap) // (cell + gap)
    if sizes.shape[0] > grid_rows * grid_cols:
        raise ValueError(
            f"{sizes.shape[0]} boxes of up to {cell} px do not fit on a {canvas} canvas with gap {gap}"
        )
    cells = rng.permutation(grid_rows * grid_cols)[: sizes.shape[0]]
    # Spread the grid's slack over the canvas so that the fallback does not hug the top-left corner.
    slack_r = canvas[0] - (grid_rows * (cell + gap) - gap)
    slack_c = canvas[1] - (grid_cols * (cell + gap) - gap)
    base_r = rng.integers(0, slack_r, endpoint=True)
    base_c = rng.integers(0, slack_c, endpoint=True)
    out = np.zeros_like(sizes)
    for index, where in enumerate(cells.tolist()):
        row, col = divmod(where, grid_cols)
        jitter_r = rng.integers(0, cell - sizes[index, 0], endpoint=True)
        jitter_c = rng.integers(0, cell - sizes[index, 1], endpoint=True)
        out[index] = base_r + row * (cell + gap) + jitter_r, base_c + col * (cell + gap) + jitter_c
    return out


# ---------------------------------------------------------------------------
# Glyph banks


class GlyphBank(NamedTuple):
    """Glyph images of one split."""

    images: np.ndarray  #: (N, h, w) float32 in [0, 1]
    labels: np.ndarray  #: (N,) int64 class ids (1..C-1)


@functools.lru_cache(maxsize=1)
def load_digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits, duplicates removed: ``(images (N, 8, 8) float32 in [0, 1],
    digits (N,) int64)``. Cached; loads offline from the wheel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the handwritten digit glyphs come from scikit-learn's bundled load_digits: "
            "pip install 'ace-core[reference]' (or pip install scikit-learn)"
        ) from error
    data = load_digits()
    flat = np.asarray(data.data, dtype=np.float32).reshape(-1, 64)
    digits = np.asarray(data.target, dtype=np.int64)
    # Identical images under two digits would leak between the splits: keep the first of each.
    _, first = np.unique(flat, axis=0, return_index=True)
    first = np.sort(first)
    return (flat[first] / np.float32(16.0)).reshape(-1, 8, 8), digits[first]


def split_glyphs(
    images: np.ndarray, labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[GlyphBank, GlyphBank]:
    """A per-class random split into (train, test), each class keeping at least one image on each side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction}")
    test = np.zeros(labels.shape[0], dtype=bool)
    for label in np.unique(labels).tolist():
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            raise ValueError(f"class {label} has {members.size} glyph image(s); a split needs 2")
        take = min(members.size - 1, max(1, round(test_fraction * members.size)))
        test[rng.permutation(members)[:take]] = True
    return GlyphBank(images[~test], labels[~test]), GlyphBank(images[test], labels[test])
