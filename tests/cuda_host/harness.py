"""Run the CUDA kernels of ``ace_core.backends._cupy_source`` on the host, for tests without a GPU.

The very kernel text (``SOURCE``) is compiled as C++ by g++ after ``shim.h``
(one host thread per CUDA thread, see there), together with one entry point
per kernel variant that :mod:`ace_core.backends._cupy_launch` can choose. The
library is built on first use and cached by the hash of everything that goes
into it, under ``$ACE_CUDA_HOST_CACHE`` or ``~/.cache/ace_core/cuda_host``
(built under a temporary name and renamed into place, so that concurrent test
processes never see half a file).

:func:`run` takes a :class:`~ace_core.backends._cupy_launch.Launch`, as the
CuPy path hands to ``RawModule`` functions, and checks every argument against
the kernel's parameter list parsed from the source: ``numpy.int32`` for
``int``, ``numpy.int64`` for ``long long``, ``numpy.float32`` for ``float``,
a C-contiguous NumPy array of the pointee's dtype (writeable unless
``const``) or ``_cupy_launch.NULL`` for a pointer. A Python ``int`` or a
float64 where the kernel takes ``int``/``float`` raises ``TypeError``, as
they would be silently misread by a real launch.

Arrays are copied into buffers between guard zones: a read past an array the
kernel only reads gives NaN, a write past an array it writes is reported by
:func:`run`, and the outputs start as NaN, so that an element the kernel
should write but does not stays NaN.

:func:`host_cupy` is a stand-in for the ``cupy`` module (NumPy functions, a
``RawModule`` that launches through :func:`run`) under which
``ace_core.backends.cupy`` itself can be imported and called.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ace_core.backends import _cupy_launch, _cupy_source

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim.h"
CXX = os.environ.get("CXX", "g++")
CXX_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-w")
#: A barrier that waits longer than this fails the launch (a deadlock in the kernel).
BARRIER_TIMEOUT_MS = 120_000
GUARD_BYTES = 4096

__all__ = ["available", "library", "kernel_signatures", "run", "host_cupy", "HostArray", "launches"]


# --------------------------------------------------------------------------- the kernels' signatures


class Parameter(NamedTuple):
    type: str  # C++ type with the template parameters still in, __restrict__ dropped
    name: str


class Signature(NamedTuple):
    template: tuple[str, ...]  # template parameter names, in order
    parameters: tuple[Parameter, ...]


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def kernel_signatures(source: str = _cupy_source.SOURCE) -> dict[str, Signature]:
    """Every ``__global__`` kernel of ``source``: its template parameters and its parameter list."""
    text = _strip_comments(source)
    pattern = re.compile(
        r"template\s*<([^>]*)>\s*__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)"
    )
    found = {}
    for match in pattern.finditer(text):
        template = tuple(p.split()[-1] for p in match.group(1).split(","))
        parameters = []
        for piece in match.group(3).split(","):
            words = piece.replace("__restrict__", " ").replace("*", " * ").split()
            parameters.append(Parameter(" ".join(words[:-1]).replace(" *", "*"), words[-1]))
        found[match.group(2)] = Signature(template, tuple(parameters))
    return found


def _instantiation(name_expression: str) -> tuple[str, tuple[str, ...]]:
    """``("ace_forward_tiles", ("float", "float", "8"))`` from ``ace_forward_tiles<float, float, 8>``."""
    match = re.fullmatch(r"\s*(\w+)\s*<(.*)>\s*", name_expression)
    if match is None:
        raise ValueError(f"not a template name expression: {name_expression!r}")
    return match.group(1), tuple(a.strip() for a in match.group(2).split(","))


def _concrete(type_text: str, template: tuple[str, ...], arguments: tuple[str, ...]) -> str:
    for name, value in zip(template, arguments, strict=True):
        type_text = re.sub(rf"\b{name}\b", value, type_text)
    return type_text


def launches() -> list[str]:
    """Every name expression that the CuPy path can launch."""
    return _cupy_launch.all_kernel_names()


# --------------------------------------------------------------------------- building


def _entry_points(names: list[str]) -> str:
    """C++ of one ``void ace_host_kernel_<i>(void** args)`` per name expression, and the table of them."""
    signatures = kernel_signatures()
    lines = []
    for index, name in enumerate(names):
        kernel, arguments = _instantiation(name)
        signature = signatures[kernel]
        values = [
            f"*({_concrete(p.type, signature.template, arguments)}*)args[{i}]"
            for i, p in enumerate(signature.parameters)
        ]
        lines.append(f"static void ace_host_kernel_{index}(void** args) {{ {name}({', '.join(values)}); }}")
    table = ", ".join(f"ace_host_kernel_{i}" for i in range(len(names)))
    lines += [
        f"static void (*const ace_host_kernels[])(void**) = {{{table}}};",
        'extern "C" int ace_host_kernel_count() {',
        "    return (int)(sizeof ace_host_kernels / sizeof *ace_host_kernels);",
        "}",
        'extern "C" int ace_host_launch(int kernel, unsigned grid, unsigned block, void** args,',
        "                               long timeout_ms, char* error, int error_size) {",
        "    return ace_host::launch(ace_host_kernels[kernel], grid, block, args, timeout_ms, error,",
        "                            error_size);",
        "}",
        # The half conversions' host branch, for the tests of cvt.rn's rounding.
        'extern "C" void ace_host_to_half(const float* in, unsigned short* out, long n) {',
        "    for (long i = 0; i < n; ++i) { ace_f16 h; ace_store(&h, in[i]); out[i] = h.bits; }",
        "}",
        'extern "C" void ace_host_from_half(const unsigned short* in, float* out, long n) {',
        "    for (long i = 0; i < n; ++i) { ace_f16 h{in[i]}; out[i] = ace_widen(h); }",
        "}",
        'extern "C" void ace_host_to_bfloat16(const float* in, unsigned short* out, long n) {',
        "    for (long i = 0; i < n; ++i) { ace_bf16 h; ace_store(&h, in[i]); out[i] = h.bits; }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def available() -> str | None:
    """None when the harness can be built here, else why not."""
    if shutil.which(CXX) is None:
        return f"no C++ compiler ({CXX}) on PATH"
    return None


def _cache_root() -> Path:
    configured = os.environ.get("ACE_CUDA_HOST_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ace_core" / "cuda_host"


def _build(names: list[str]) -> Path:
    shim = SHIM.read_text()
    program = '#include "shim.h"\n' + _cupy_source.SOURCE + "\n" + _entry_points(names)
    version = subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([shim, program, " ".join(CXX_FLAGS), *version]).encode()).hexdigest()[:24]
    try:
        folder = _cache_root() / key
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: the system's temporary folder
        folder = Path(tempfile.gettempdir()) / "ace_core_cuda_host" / key
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / "libace_cuda_host.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=folder, prefix="build-") as work:
        work = Path(work)
        (work / "shim.h").write_text(shim)
        (work / "kernels.cpp").write_text(program)
        built = work / "libace_cuda_host.so"
        result = subprocess.run(
            [CXX, *CXX_FLAGS, "-I", str(work), "-o", str(built), str(work / "kernels.cpp")],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the host kernels failed:\n{result.stderr[-4000:]}")
        os.replace(built, target)  # atomic: another process sees the old file or the whole new one
    return target


class _Library(NamedTuple):
    handle: ctypes.CDLL
    names: dict[str, int]  # name expression -> entry point index


_LIBRARY: _Library | None = None
_LOCK = threading.Lock()


def library() -> _Library:
    """The built and loaded host library (once per process)."""
    global _LIBRARY
    with _LOCK:
        if _LIBRARY is None:
            names = launches()
            handle = ctypes.CDLL(str(_build(names)))
            handle.ace_host_launch.restype = ctypes.c_int
            handle.ace_host_launch.argtypes = [
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_long,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            assert handle.ace_host_kernel_count() == len(names)
            _LIBRARY = _Library(handle, {name: i for i, name in enumerate(names)})
    return _LIBRARY


# --------------------------------------------------------------------------- launching

_SCALARS = {
    "int": (np.int32, ctypes.c_int32),
    "unsigned int": (np.uint32, ctypes.c_uint32),
    "long long": (np.int64, ctypes.c_int64),
    "float": (np.float32, ctypes.c_float),
    "double": (np.float64, ctypes.c_double),
}
_POINTEES = {
    "float": (np.dtype(np.float32),),
    "double": (np.dtype(np.float64),),
    "ace_f16": (np.dtype(np.float16),),
    "ace_bf16": (np.dtype(np.uint16), np.dtype(np.int16)),
    "unsigned char": (np.dtype(np.bool_), np.dtype(np.uint8)),
}


class _Guarded:
    """An array's bytes between two guard zones.

    The zones of an array the kernel only reads hold 0xFF bytes (NaN in every
    floating type, so that a read past the array shows in the results); those
    of an array it writes hold 0xA5 bytes, which a stray write of any computed
    value (NaN included) changes.
    """

    def __init__(self, array: np.ndarray, written: bool, poison: bool) -> None:
        self.array = array
        self.guard = 0xA5 if written else 0xFF
        self.raw = np.full(array.nbytes + 2 * GUARD_BYTES, self.guard, dtype=np.uint8)
        middle = self.raw[GUARD_BYTES : GUARD_BYTES + array.nbytes]
        if written and poison:
            middle[:] = 0xFF
        else:
            middle[:] = array.reshape(-1).view(np.uint8)
        self.pointer = self.raw.ctypes.data + GUARD_BYTES

    def guards_intact(self) -> bool:
        return bool(
            np.all(self.raw[:GUARD_BYTES] == self.guard) and np.all(self.raw[-GUARD_BYTES:] == self.guard)
        )

    def copy_back(self) -> None:
        self.array.reshape(-1).view(np.uint8)[:] = self.raw[GUARD_BYTES : GUARD_BYTES + self.array.nbytes]


def check_arguments(
    kernel: str, args: tuple[Any, ...], signatures: dict[str, Signature] | None = None
) -> list[tuple[Parameter, str, Any]]:
    """``(parameter, concrete type, argument)`` for every argument; TypeError on any mismatch.

    ``signatures``: those of :func:`kernel_signatures` (of ``SOURCE``) by default.
    """
    name, arguments = _instantiation(kernel)
    signature = (signatures or kernel_signatures())[name]
    if len(args) != len(signature.parameters):
        raise TypeError(f"{kernel} takes {len(signature.parameters)} arguments, got {len(args)}")
    checked = []
    for parameter, value in zip(signature.parameters, args, strict=True):
        concrete = _concrete(parameter.type, signature.template, arguments)
        where = f"{kernel} argument `{parameter.name}` ({concrete})"
        if concrete.endswith("*"):
            pointee = concrete[:-1].removeprefix("const ").strip()
            if isinstance(value, np.ndarray):
                if value.dtype not in _POINTEES[pointee]:
                    raise TypeError(f"{where}: an array of {_POINTEES[pointee]}, got {value.dtype}")
                if not value.flags.c_contiguous:
                    raise TypeError(f"{where}: a C-contiguous array")
                if not concrete.startswith("const") and not value.flags.writeable:
                    raise TypeError(f"{where}: the kernel writes this array, got a read-only one")
            elif not (type(value) is np.uint64 and int(value) == 0):
                raise TypeError(f"{where}: an array or NULL (numpy.uint64(0)), got {type(value).__name__}")
        else:
            scalar = concrete.removeprefix("const ").strip()
            expected = _SCALARS[scalar][0]
            if type(value) is not expected:
                raise TypeError(f"{where}: numpy.{expected.__name__}, got {type(value).__name__} {value!r}")
        checked.append((parameter, concrete, value))
    return checked


def run(launch: _cupy_launch.Launch, *, poison: bool = True) -> None:
    """Run one launch on the host: check it, copy the arrays into guarded buffers, launch, copy back.

    ``poison``: fill the arrays the kernel may write with 0xFF bytes (NaN)
    before the launch, so that an element it does not write is noticed.
    """
    if len(launch.grid) != 1 or len(launch.block) != 1:
        raise TypeError(
            f"{launch.kernel}: grid and block must be 1-tuples, got {launch.grid}, {launch.block}"
        )
    grid, block = launch.grid[0], launch.block[0]
    if type(grid) is not int or type(block) is not int:
        raise TypeError(f"{launch.kernel}: grid and block are Python ints, got {type(grid)}, {type(block)}")
    checked = check_arguments(launch.kernel, launch.args)
    lib = library()
    index = lib.names[launch.kernel]
    buffers: list[tuple[_Guarded, bool]] = []  # (buffer, written by the kernel)
    values: list[Any] = []
    for _, concrete, value in checked:
        if concrete.endswith("*"):
            if isinstance(value, np.ndarray):
                written = not concrete.startswith("const")
                guarded = _Guarded(value, written, poison)
                buffers.append((guarded, written))
                values.append(ctypes.c_void_p(guarded.pointer))
            else:
                values.append(ctypes.c_void_p(0))
        else:
            values.append(_SCALARS[concrete.removeprefix("const ").strip()][1](value.item()))
    argv = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values))
    error = ctypes.create_string_buffer(512)
    status = lib.handle.ace_host_launch(index, grid, block, argv, BARRIER_TIMEOUT_MS, error, len(error))
    if status != 0:
        raise RuntimeError(f"{launch.kernel} failed on the host: {error.value.decode()}")
    for guarded, _ in buffers:
        if not guarded.guards_intact():
            raise RuntimeError(f"{launch.kernel} wrote outside an array of {guarded.array.nbytes} bytes")
    for guarded, written in buffers:
        if written:
            guarded.copy_back()


def half_conversions(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 → half bits, bfloat16 bits)`` by the kernels' own store functions, on the host."""
    lib = library().handle
    values = np.ascontiguousarray(values, dtype=np.float32)
    half = np.empty(values.shape, np.uint16)
    bf16 = np.empty(values.shape, np.uint16)
    lib.ace_host_to_half(ctypes.c_void_p(values.ctypes.data), ctypes.c_void_p(half.ctypes.data), values.size)
    lib.ace_host_to_bfloat16(
        ctypes.c_void_p(values.ctypes.data), ctypes.c_void_p(bf16.ctypes.data), values.size
    )
    return half, bf16


def widen_half(bits: np.ndarray) -> np.ndarray:
    """half bits → float32 by the kernels' ``ace_widen``, on the host."""
    lib = library().handle
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, np.float32)
    lib.ace_host_from_half(ctypes.c_void_p(bits.ctypes.data), ctypes.c_void_p(out.ctypes.data), bits.size)
    return out


# --------------------------------------------------------------------------- a host stand-in for cupy


class _Device:
    """The one "device" of the host stand-in: a context manager, equal to itself."""

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return "<host device>"


_DEVICE = _Device()


class HostArray(np.ndarray):
    """A NumPy array that plays a CuPy array (``.device`` is a context manager)."""

    @property
    def device(self) -> _Device:  # type: ignore[override]
        return _DEVICE


def as_host_array(x: np.ndarray) -> HostArray:
    return np.asarray(x).view(HostArray)


class _RawModule:
    def __init__(self, code: str, name_expressions: tuple[str, ...]) -> None:
        if code != _cupy_source.SOURCE:
            raise AssertionError("RawModule got another source than _cupy_source.SOURCE")
        self.names = tuple(name_expressions)
        made.append(self.names)

    def get_function(self, name: str) -> Any:
        if name not in self.names:
            raise AssertionError(f"{name} was not among the name expressions {self.names}")

        def function(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
            run(_cupy_launch.Launch(name, grid, block, args))

        return function


#: The name expressions of every RawModule the stand-in made.
made: list[tuple[str, ...]] = []


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("cupy")
    for name in (
        "asarray",
        "ascontiguousarray",
        "broadcast_to",
        "empty",
        "may_share_memory",
        "bool_",
        "dtype",
    ):
        setattr(module, name, getattr(np, name))
    for name in ("float16", "float32", "float64", "uint16", "int16"):
        setattr(module, name, getattr(np, name))
    module.ndarray = HostArray
    module.RawModule = _RawModule
    return module


@contextlib.contextmanager
def host_cupy() -> Iterator[types.ModuleType]:
    """``ace_core.backends.cupy`` imported against the host stand-in of ``cupy``; restored afterwards.

    Its inputs must be :class:`HostArray` (:func:`as_host_array`) for the fused
    path to take them, as it takes only ``cupy.ndarray``.
    """
    import ace_core.backends as backends

    saved = {name: sys.modules.get(name) for name in ("cupy", "ace_core.backends.cupy")}
    had_attribute = hasattr(backends, "cupy")
    saved_attribute = getattr(backends, "cupy", None)
    sys.modules["cupy"] = _stand_in()
    sys.modules.pop("ace_core.backends.cupy", None)
    try:
        yield importlib.import_module("ace_core.backends.cupy")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if had_attribute:
            backends.cupy = saved_attribute
        elif hasattr(backends, "cupy"):
            del backends.cupy
