"""Progress of long converter runs: one line per stage on stderr, TensorFlow's own log out of sight.

``edgeface build`` runs for minutes inside TensorFlow, whose C++ side writes dozens of lines (oneDNN, CUDA,
MLIR, XNNPACK) straight to file descriptor 2. :func:`quiet_native_log` sends that descriptor to a log file
for the length of the run while Python's ``sys.stderr`` (the stage lines, tqdm bars, warnings) and the
logging handlers keep the console; ``edgeface -v build`` leaves everything on the console. :func:`stage`
prints ``[m:ss] what`` with the time since the run started.

Imports only the standard library: the CLI calls these before TensorFlow is imported.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

_started: Optional[float] = None


def stage(what: str) -> None:
    """Print one progress line ``[m:ss] what`` on stderr (the time since :func:`quiet_native_log` began)."""
    global _started
    if _started is None:
        _started = time.monotonic()
    seconds = int(time.monotonic() - _started)
    print(f"[{seconds // 60}:{seconds % 60:02d}] {what}", file=sys.stderr, flush=True)


def elapsed() -> float:
    """Seconds since the run started (0 before the first stage)."""
    return 0.0 if _started is None else time.monotonic() - _started


def quiet_tensorflow() -> None:
    """Ask TensorFlow (and absl, gRPC) for errors only; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")


@contextlib.contextmanager
def quiet_native_log(log_file: Path, verbose: bool = False) -> Iterator[None]:
    """Run the block with native (C++) writes to stderr going to ``log_file``; Python output stays visible.

    With ``verbose`` nothing is redirected. If the block raises, the path of the log is printed so nothing
    is lost. Starts the stage clock.
    """
    global _started
    _started = time.monotonic()
    if verbose:
        yield
        return
    quiet_tensorflow()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured by a test): nothing to hide
        yield
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    console_fd = os.dup(fd)
    console = os.fdopen(console_fd, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                        errors="backslashreplace")
    saved_stderr = sys.stderr
    moved = []  # logging handlers that wrote to the old stderr object now write to the console
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is saved_stderr:
            moved.append(handler)
            handler.setStream(console)
    with open(log_file, "wb") as native, warnings.catch_warnings():
        # TensorFlow's Python side: its warnings and its loggers (tensorflow, absl) are log noise here too
        warnings.filterwarnings("ignore", module=r"(tensorflow|tf_keras|keras|absl)(\.|$)")
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.dup2(native.fileno(), fd)
        sys.stderr = console
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            console.flush()
            os.dup2(console_fd, fd)
            sys.stderr = saved_stderr
            for handler in moved:
                handler.setStream(saved_stderr)
            console.close()
            if failed:
                print(f"(TensorFlow's log of this run: {log_file})", file=sys.stderr)


def human_size(n: int) -> str:
    """``12.3 MB`` / ``456 KB``."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"
