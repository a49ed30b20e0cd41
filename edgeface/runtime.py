"""Interpreter factory and tensor helpers (pycoral ``adapters`` style).

One interpreter is used, the first that imports of:

1. ``ai_edge_litert.interpreter`` (LiteRT, the maintained runtime),
2. ``tflite_runtime.interpreter`` (legacy 2.14 wheels; needs ``numpy<2``),
3. ``tensorflow.lite`` (deprecated; only when TensorFlow happens to be installed).

Set ``EDGEFACE_RUNTIME`` to ``litert``, ``tflite_runtime`` or ``tensorflow`` to force one; a forced runtime
that does not import is an error, never a silent fallback.

Kernels: the CPU ops run on the runtime's optimized kernels (and, for LiteRT, XNNPACK). These are what
you deploy, but they are platform code: a 1-step rounding difference in one op between, say, x86 and
ARM NEON code can grow through a deep int8 network. ``kernels="reference"`` (or ``EDGEFACE_KERNELS=reference``)
selects the runtime's portable reference kernels, which compute the same integers on every platform; they
are 3-10x slower and meant for cross-platform proofs and debugging, not for the door.

Quantized tensors are converted with the tensor's *own* scale and zero point:
``real = scale * (q - zero_point)``.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Optional

import cv2
import numpy as np

from . import preprocess
from .errors import EdgefaceError, MissingFileError, OptionError

log = logging.getLogger(__name__)

RUNTIMES = ("litert", "tflite_runtime", "tensorflow")
KERNELS = ("optimized", "reference")
_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
EDGETPU_LIBRARY = "libedgetpu.so.1"


class RuntimeNotFoundError(EdgefaceError, ImportError):
    """No TFLite interpreter could be imported."""


class ModelLoadError(EdgefaceError, ValueError):
    """A model file that the interpreter cannot load (not a TFLite flatbuffer, unsupported ops...)."""


class DelegateError(EdgefaceError, RuntimeError):
    """A hardware delegate (Edge TPU) could not be loaded."""


class Runtime(NamedTuple):
    name: str
    version: str
    Interpreter: Any
    load_delegate: Any
    #: the runtime's ``OpResolverType`` enum (``BUILTIN_REF`` selects the reference kernels)
    OpResolverType: Any = None


def _import_runtime(name: str) -> Runtime:
    if name == "tensorflow":
        # ``import tensorflow.lite`` is the source package, not the ``tf.lite`` API: go through ``tf``.
        tf = importlib.import_module("tensorflow")
        log.warning("using the deprecated tf.lite interpreter; install ai-edge-litert for the maintained one")
        return Runtime(name, getattr(tf, "__version__", "?"), tf.lite.Interpreter, tf.lite.experimental.load_delegate,
                       getattr(tf.lite.experimental, "OpResolverType", None))
    module = importlib.import_module(_MODULES[name])
    top = importlib.import_module(_MODULES[name].split(".")[0])
    version = getattr(top, "__version__", None) or getattr(module, "__version__", "?")
    return Runtime(name, str(version), module.Interpreter, module.load_delegate,
                   getattr(module, "OpResolverType", None))


def get_runtime(name: Optional[str] = None) -> Runtime:
    """The interpreter runtime: ``name``, ``$EDGEFACE_RUNTIME``, or the first of :data:`RUNTIMES` that imports."""
    name = name or os.environ.get("EDGEFACE_RUNTIME") or None
    if name is not None:
        if name not in RUNTIMES:
            raise OptionError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
        try:
            return _import_runtime(name)
        except ImportError as exc:
            raise RuntimeNotFoundError(f"runtime {name!r} was requested but does not import: {exc}") from exc
    errors = []
    for candidate in RUNTIMES:
        try:
            return _import_runtime(candidate)
        except ImportError as exc:
            errors.append(f"{candidate}: {exc}")
    raise RuntimeNotFoundError(
        "no TFLite interpreter found; install one with `pip install edgeface[device]` (ai-edge-litert) or "
        "`pip install edgeface[device-legacy]` (tflite-runtime, numpy<2). Tried: " + "; ".join(errors)
    )


@contextlib.contextmanager
def _native_stderr_to_log():
    """Capture what the C++ runtime writes to fd 2 while creating an interpreter.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every interpreter; INFO
    lines go to this module's debug log, anything else is written back to stderr unchanged.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.startswith("INFO: "):
                    log.debug("runtime: %s", line[6:])
                elif line.strip():
                    print(line, file=sys.stderr)


def get_kernels(kernels: Optional[str] = None) -> str:
    """The kernel set to use: ``kernels``, ``$EDGEFACE_KERNELS`` or ``"optimized"``; an unknown name is an error."""
    kernels = kernels or os.environ.get("EDGEFACE_KERNELS") or "optimized"
    if kernels not in KERNELS:
        raise OptionError(f"unknown kernels {kernels!r} (argument or EDGEFACE_KERNELS); "
                          f"choose one of {', '.join(KERNELS)}")
    return kernels


def load_edgetpu_delegate(rt: Runtime):
    """The Edge TPU delegate of runtime ``rt``; :class:`DelegateError` (with what to install) when it cannot load.

    The shared library is opened first, so a missing ``libedgetpu.so.1`` is reported without the runtime's
    half-built delegate object printing "Exception ignored in Delegate.__del__" later.
    """
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        return rt.load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as exc:
        raise DelegateError(
            f"could not load the Edge TPU delegate {EDGETPU_LIBRARY}: {exc}. Install the Edge TPU runtime "
            "(Debian package libedgetpu1-std), plug in the Coral device, and use a model compiled by "
            "edgetpu_compiler (*_edgetpu.tflite)"
        ) from exc


def make_interpreter(model_path: str | os.PathLike, threads: Optional[int] = None,
                     accelerator: Optional[str] = None, runtime: Optional[str] = None,
                     kernels: Optional[str] = None):
    """Create an allocated interpreter for ``model_path``.

    Args:
      threads: CPU threads for the CPU kernels (default: all cores).
      accelerator: ``None`` for CPU or ``"edgetpu"`` for a Coral Edge TPU (needs ``libedgetpu.so.1`` and a
        model compiled by ``edgetpu_compiler``).
      runtime: force an interpreter (see module docs).
      kernels: ``"optimized"`` (default, or ``$EDGEFACE_KERNELS``) or ``"reference"``: the portable
        reference kernels, bit-exact across platforms and several times slower (see module docs).
    """
    path = Path(model_path)
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    if threads is not None and threads < 1:
        raise OptionError(f"threads must be >= 1, got {threads}")
    kernels = get_kernels(kernels)
    rt = get_runtime(runtime)
    options = {}
    if kernels == "reference":
        if accelerator == "edgetpu":
            raise OptionError("kernels='reference' runs on the CPU; it cannot be combined with accelerator='edgetpu'")
        if rt.OpResolverType is None:
            raise OptionError(f"runtime {rt.name} {rt.version} cannot select reference kernels (no OpResolverType)")
        options["experimental_op_resolver_type"] = rt.OpResolverType.BUILTIN_REF
        log.warning("%s: reference kernels (portable and slow; for proofs and debugging)", path.name)
    delegates = []
    if accelerator == "edgetpu":
        delegates.append(load_edgetpu_delegate(rt))
    elif accelerator not in (None, "cpu"):
        raise OptionError(f"unknown accelerator {accelerator!r}; use None, 'cpu' or 'edgetpu'")
    try:
        with _native_stderr_to_log():
            interpreter = rt.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1,
                                         experimental_delegates=delegates or None, **options)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a loadable TFLite model ({exc})") from exc
    if delegates:
        log.info("%s: Edge TPU delegate loaded", path.name)
    return interpreter


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Quantize float ``x`` to ``dtype`` with ``q = round(x / scale) + zero_point``, saturating."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Dequantize with the tensor's own parameters: ``scale * (q - zero_point)``."""
    return (np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)


def _params(detail: dict) -> tuple[float, int]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def is_quantized(detail: dict) -> bool:
    return np.dtype(detail["dtype"]).kind in "iu" and _params(detail)[0] > 0


def set_input(interpreter, x: np.ndarray, index: int = 0) -> None:
    """Set input ``index`` from float ``x`` (already normalized); quantizes with the tensor's own params."""
    detail = interpreter.get_input_details()[index]
    x = np.asarray(x)
    if tuple(x.shape) != tuple(detail["shape"]):
        raise ValueError(f"input {detail['name']!r} wants shape {tuple(detail['shape'])}, got {x.shape}")
    if is_quantized(detail):
        x = quantize(x, *_params(detail), detail["dtype"])
    else:
        x = x.astype(detail["dtype"], copy=False)
    interpreter.set_tensor(detail["index"], x)


@lru_cache(maxsize=32)
def _pixel_table(mean: tuple, std: tuple, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)  # the manifest normalization of every uint8 value
    table = preprocess.normalize(ramp, mean if len(mean) > 1 else mean[0], std if len(std) > 1 else std[0])
    if scale > 0:
        table = quantize(table, scale, zero_point, np.dtype(dtype))
    table = table.astype(dtype, copy=False)
    table.setflags(write=False)
    return table  # (256, 1) or (256, channels)


def set_pixels(interpreter, pixels: np.ndarray, mean, std, index: int = 0) -> None:
    """Set input ``index`` from a uint8 image: ``(pixels - mean) / std`` (a manifest's normalization, scalars or
    one value per channel), quantized with the tensor's own params.

    The same tensor as ``set_input(interpreter, preprocess.normalize(pixels, mean, std)[None])``, bit for bit,
    but through a 256-entry table of those values (one lookup per pixel instead of float arithmetic on
    every value: 0.03 instead of 0.11 ms for a 192 x 192 detector input). ``pixels`` is (H, W, C) without the
    batch axis.
    """
    detail = interpreter.get_input_details()[index]
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if (1, *pixels.shape) != tuple(detail["shape"]):
        raise ValueError(f"input {detail['name']!r} wants shape {tuple(detail['shape'])}, got {(1, *pixels.shape)}")
    mean, std = tuple(np.atleast_1d(mean).astype(float)), tuple(np.atleast_1d(std).astype(float))
    scale, zero_point = _params(detail) if is_quantized(detail) else (0.0, 0)
    table = _pixel_table(mean, std, np.dtype(detail["dtype"]).name, scale, zero_point)
    if table.shape[1] == 1:
        values = cv2.LUT(np.ascontiguousarray(pixels), table[:, 0])
    else:
        if pixels.ndim != 3 or pixels.shape[2] != table.shape[1]:
            raise ValueError(f"{table.shape[1]} per-channel means need (H, W, {table.shape[1]}) pixels, got "
                             f"{pixels.shape}")
        values = table[pixels, np.arange(table.shape[1])]
    interpreter.set_tensor(detail["index"], values[None])


def get_output(interpreter, index: int = 0) -> np.ndarray:
    """Output ``index`` as float32, dequantized with the tensor's own scale and zero point."""
    detail = interpreter.get_output_details()[index]
    value = interpreter.get_tensor(detail["index"])
    if is_quantized(detail):
        return dequantize(value, *_params(detail))
    return value.astype(np.float32, copy=False)


def output_index(interpreter, name: str) -> int:
    """Position of the output tensor called ``name`` (a model's manifest names its outputs)."""
    for i, detail in enumerate(interpreter.get_output_details()):
        if detail["name"] == name:
            return i
    names = [d["name"] for d in interpreter.get_output_details()]
    raise ValueError(f"model has no output named {name!r}; it has {names}")
