"""Training checkpoints: one ``.npz`` of arrays plus JSON, written atomically.

A run directory holds

- ``checkpoint.npz``: the model's parameters and buffers, the optimiser's
  state, and a JSON record (``meta``) with the step, the data RNG's state, the
  whole run configuration and the metrics history so far;
- ``config.json``: the run configuration, for people and for ``ace predict``;
- ``metrics.json``: the metrics history (also inside the checkpoint).

Every file is written to a temporary file in the same directory, flushed and
``fsync``-ed, then moved over the old one with :func:`os.replace` (atomic on
POSIX and Windows), and the directory is synced. A crash or a failing write at
any moment leaves either the old file or the new one, never a truncated one:
an interrupted run loses at most the steps since its last checkpoint.

The ``.npz`` holds only numeric arrays and one string array, so it loads with
``allow_pickle=False``.

Examples
--------
>>> import tempfile, numpy as np
>>> from ace_core.reference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
>>> with tempfile.TemporaryDirectory() as run:
...     _ = save_checkpoint(run, Checkpoint(step=3, model={"w": np.ones(2, np.float32)}))
...     back = load_checkpoint(run)
>>> back.step, back.model["w"].tolist()
(3, [1.0, 1.0])
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "FORMAT_VERSION",
    "Checkpoint",
    "atomic_write",
    "write_json_atomic",
    "save_checkpoint",
    "load_checkpoint",
    "has_checkpoint",
    "read_json",
]

CHECKPOINT_FILE = "checkpoint.npz"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
#: Bumped when the layout of ``checkpoint.npz`` changes incompatibly.
FORMAT_VERSION = 1

_GROUPS = ("model", "optimizer")


@dataclasses.dataclass
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped (host-side NumPy arrays)."""

    step: int  #: optimiser steps done
    #: the model's ``state_dict()``: parameters and buffers by name
    model: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: the optimiser's ``state_dict``; nested dicts are stored flattened with ``/``
    optimizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: ``numpy.random.Generator.bit_generator.state`` of the training data stream
    rng_state: dict[str, Any] | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  #: the run configuration
    history: dict[str, Any] = dataclasses.field(default_factory=dict)  #: losses and evaluations so far


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(file)`` so that ``path`` is never seen half written.

    ``write`` fills a temporary file in the same directory; it is flushed,
    ``fsync``-ed and renamed over ``path`` with :func:`os.replace`. If
    ``write`` raises, the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : path-like
    write : callable
        Called with a binary file object opened for writing.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, _default_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(value: Any, indent: int | None = None) -> str:
    # allow_nan: a diverged run's nan loss is recorded as NaN rather than crashing the save.
    return json.dumps(value, default=_json_default, indent=indent, allow_nan=True)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` with :func:`atomic_write`."""
    text = _dumps(value, indent=2) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"checkpoint keys must not contain '/', got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _checkpoint_path(where: str | os.PathLike[str]) -> Path:
    where = Path(where)
    return where if where.suffix == ".npz" else where / CHECKPOINT_FILE


def save_checkpoint(directory: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``directory/checkpoint.npz`` atomically (see :func:`atomic_write`).

    Parameters
    ----------
    directory : path-like
        The run directory (created if missing).
    checkpoint : Checkpoint
        Host arrays (NumPy); the caller moves device arrays to the host first.

    Returns
    -------
    pathlib.Path
        The path of the checkpoint file.
    """
    arrays: dict[str, np.ndarray] = {}
    for group in _GROUPS:
        # Parameter names may hold "/" (they are stored as is); only the
        # optimiser's state is a nested dict that needs flattening.
        tree = getattr(checkpoint, group)
        for name, value in (_flatten(tree) if group == "optimizer" else dict(tree)).items():
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"checkpoint {group}/{name} is not numeric (dtype {array.dtype})")
            arrays[f"{group}/{name}"] = array
    meta = {
        "format": FORMAT_VERSION,
        "step": int(checkpoint.step),
        "rng_state": checkpoint.rng_state,
        "config": checkpoint.config,
        "history": checkpoint.history,
    }
    arrays["meta"] = np.asarray(_dumps(meta))

    def write(handle: IO[bytes]) -> None:
        # Build the archive in memory first, so a failure while serialising
        # never reaches the disk at all.
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        handle.write(buffer.getbuffer())

    return atomic_write(_checkpoint_path(directory), write)


def has_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a ``checkpoint.npz``."""
    return _checkpoint_path(directory).is_file()


def load_checkpoint(where: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    where : path-like
        The run directory, or the ``.npz`` file itself.

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        When there is no checkpoint.
    ValueError
        When the file is not a checkpoint of a known format.
    """
    path = _checkpoint_path(where)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with np.load(path, allow_pickle=False) as archive:
        if "meta" not in archive.files:
            raise ValueError(f"{path} is not an ace_core training checkpoint (no 'meta' record)")
        meta = json.loads(str(archive["meta"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path} has checkpoint format {meta.get('format')}, expected {FORMAT_VERSION}")
        groups: dict[str, dict[str, np.ndarray]] = {group: {} for group in _GROUPS}
        for name in archive.files:
            group, _, key = name.partition("/")
            if group in groups:
                groups[group][key] = archive[name]
    return Checkpoint(
        step=int(meta["step"]),
        model=groups["model"],
        optimizer=_unflatten(groups["optimizer"]),
        rng_state=meta.get("rng_state"),
        config=meta.get("config", {}),
        history=meta.get("history", {}),
    )
