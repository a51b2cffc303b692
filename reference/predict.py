"""``ace predict``: read image files with a trained model of the reference.

The models were trained on light ink on a dark ground, values in [0, 1], at
a fixed input height (32 px text lines, square canvases for the 2D tasks).
:func:`load_image` brings a file to that form with Pillow: grayscale, scaled
to [0, 1], inverted when it is mostly light (dark text on white paper),
resized to the model's input height; a text line keeps its aspect ratio and
is padded on the right to a multiple of the CRNN's width reduction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from . import tasks as _tasks
from .defaults import SEQUENCE_READOUT
from .readout import readout

__all__ = ["load_image", "input_size", "predict_files"]

# The CRNN halves the width twice: widths are padded to a multiple of this.
_WIDTH_MULTIPLE = 4


def input_size(task: _tasks.Task, dataset: Any) -> tuple[int, int | None]:
    """``(height, width)`` the model expects; ``width`` is ``None`` when any width works (text lines)."""
    if task.kind == "sequence":
        return int(dataset.height), None
    return int(dataset.canvas), int(dataset.canvas)


def load_image(
    path: str | os.PathLike[str],
    height: int,
    width: int | None = None,
    *,
    invert: Literal["auto", "yes", "no"] = "auto",
) -> np.ndarray:
    """An image file as a float32 ``(1, 1, height, W)`` batch in [0, 1], light ink on dark.

    Parameters
    ----------
    path : path-like
        Any format Pillow reads; colour is converted to grayscale (``"L"``).
    height : int
        Output height in pixels.
    width : int, optional
        Output width; default: keep the aspect ratio, then pad with the
        background on the right to a multiple of 4 (at least 4).
    invert : {"auto", "yes", "no"}
        ``"auto"`` inverts when the median pixel is above 0.5 (a light ground).

    Returns
    -------
    numpy.ndarray
    """
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow is in the reference extra
        raise ImportError("ace predict needs Pillow: pip install 'ace-core[reference]'") from error
    with Image.open(path) as image:
        gray = image.convert("L")
        if width is None:
            scaled = max(1, round(gray.width * height / gray.height))
            gray = gray.resize((scaled, height), Image.Resampling.BILINEAR)
        else:
            gray = gray.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(gray, dtype=np.float32) / 255.0
    if invert == "yes" or (invert == "auto" and float(np.median(pixels)) > 0.5):
        pixels = 1.0 - pixels
    elif invert not in ("auto", "no"):
        raise ValueError(f"`invert` must be 'auto', 'yes' or 'no', got {invert!r}")
    if width is None:
        padded = max(_WIDTH_MULTIPLE, -(-pixels.shape[1] // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE)
        pixels = np.pad(pixels, ((0, 0), (0, padded - pixels.shape[1])))
    return np.ascontiguousarray(pixels[None, None], dtype=np.float32)


def predict_files(
    run: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    invert: Literal["auto", "yes", "no"] = "auto",
    backend: str | None = None,
    sequence_readout: Literal["greedy", "ordered"] = SEQUENCE_READOUT,
) -> list[Any]:
    """What the model saved in ``run`` reads in each image file.

    Parameters
    ----------
    run : path-like
        A run directory of ``ace train`` (or its ``checkpoint.npz``).
    images : sequence of path-like
    invert : {"auto", "yes", "no"}
        See :func:`load_image`.
    backend : {"numpy", "cupy"}, optional
    sequence_readout : {"ordered", "greedy"}
        How the text tasks are read (:func:`ace_core.decode_ordered` or
        :func:`ace_core.decode_greedy`); the 2D tasks have one readout.

    Returns
    -------
    list
        Per image, as :func:`ace_core.reference.readout.readout` gives it: a
        string (text tasks), a sorted list of class names (the 2D toy) or a
        ``{class: count}`` dict (counting).
    """
    from .train import restore

    config, model, dataset, _ = restore(run, backend=backend)
    task = _tasks.get_task(config.task)
    height, width = input_size(task, dataset)
    results = []
    for path in images:
        batch = load_image(path, height, width, invert=invert)
        x = model.xp.asarray(batch, device=model.device)
        if config.dtype != "float32":
            x = model.xp.astype(x, model.dtype)
        logits, _ = model.forward(x, train=False)
        results.extend(readout(task, logits, dataset, xp=model.xp, sequence_readout=sequence_readout))
    return results
