"""``[models] precision = "auto"`` (the default): the door runs the faster of int8 and float32 on this CPU.

int8 is not faster everywhere. On a CPU with int8 dot-product instructions (this x86 VM's VNNI) it is: one
LFW face's model runs take 1.4x as long in float32. A Raspberry Pi 4's Cortex-A72 has no such instructions,
and there float32 XNNPACK kernels can win. So the door measures at start: the model runs of one one-face
frame (every whole-frame detector model of the configured detector, the landmark model when the embedder's
crop needs it, the embedder), both precisions interleaved on zero inputs (these networks take the same
time on any input), :data:`ROUNDS` rounds after :data:`WARMUP`. float32 is chosen only when it is
:data:`FLOAT_MARGIN` faster or better: int8 is the smaller model, the one the Edge TPU runs and the
default of every benchmark, so a tie stays int8. Both precisions share one embedding space (a gallery
enrolled with one serves the other) and each has its own calibrated thresholds in its manifest, so the
choice changes speed, not what the door decides. ``doctor`` and the start event say what was chosen and why.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from edgeface.errors import EdgefaceError

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "float32")
#: float32 is chosen when its frame takes at most this fraction of int8's
FLOAT_MARGIN = 0.9
WARMUP = 3
ROUNDS = 15


class PrecisionChoice(NamedTuple):
    """The precision the door runs, why, and the measured model time of one one-face frame per precision
    (ms; empty when nothing was measured)."""
    precision: str
    reason: str
    frame_ms: dict


def _frame_interpreters(models_dir: Path, precision: str, detector: Optional[str], threads: Optional[int]):
    """The interpreters one one-face frame runs at ``precision``: whole-frame detector models, landmark model,
    embedder (loaded with the core's own manifest checks)."""
    from edgeface.detect import FaceDetector, resolve_detector
    from edgeface.embed import FaceEmbedder
    from edgeface.manifest import resolve_models

    det = FaceDetector(resolve_detector(models_dir, precision, detector), threads=threads)
    emb = FaceEmbedder(resolve_models(models_dir, precision)[1], threads=threads)
    out = [m.interpreter for m in det.models] + [emb.interpreter]
    if emb.landmarker is not None:
        out.append(emb.landmarker.interpreter)
    for it in out:
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return out


def measure_frame_ms(sets: dict, rounds: int = ROUNDS, warmup: int = WARMUP) -> dict:
    """Median ms of running every interpreter of each set once (``{name: [interpreter, ...]}``), the sets
    interleaved (their order alternating per round) so that background load hits them alike."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    names = list(sets)
    times: dict = {n: [] for n in names}
    for r in range(warmup + rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for it in sets[n]:
                it.invoke()
            if r >= warmup:
                times[n].append(1000.0 * (time.perf_counter() - t0))
    return {n: statistics.median(v) for n, v in times.items()}


def pick(frame_ms: dict) -> str:
    """float32 when its frame takes at most :data:`FLOAT_MARGIN` of int8's, else int8."""
    return "float32" if frame_ms["float32"] <= FLOAT_MARGIN * frame_ms["int8"] else "int8"


def listed_precisions(models_dir: str | Path) -> list[str]:
    """The precisions a models folder's ``models.json`` lists (int8 first); :class:`EdgefaceError` when none."""
    from edgeface.manifest import INDEX, read_index

    index = read_index(Path(models_dir))
    listed = [p for p in PRECISIONS if isinstance(index.get(p), dict) and "embedder" in index[p]]
    if not listed:
        raise EdgefaceError(f"{Path(models_dir) / INDEX}: lists neither int8 nor float32 models")
    return listed


def choose_precision(models_dir: str | Path, detector: Optional[str] = None, threads: Optional[int] = None,
                     accelerator: str = "cpu", rounds: int = ROUNDS) -> PrecisionChoice:
    """The precision for ``[models] precision = "auto"``: int8 on an Edge TPU; otherwise measured (module doc).

    A folder whose ``models.json`` lists one precision only gets that one. A listed model that does not load
    (a missing file, an edited manifest) raises the loader's :class:`EdgefaceError`: never a silent switch to
    the other precision.
    """
    if accelerator == "edgetpu":
        return PrecisionChoice("int8", "the Edge TPU runs int8 models only", {})
    listed = listed_precisions(models_dir)
    if len(listed) == 1:
        return PrecisionChoice(listed[0], f"the models folder has {listed[0]} models only", {})
    sets = {p: _frame_interpreters(Path(models_dir), p, detector, threads) for p in listed}
    frame_ms = measure_frame_ms(sets, rounds)
    chosen = pick(frame_ms)
    reason = (f"measured on this CPU as the models load: the model runs of a one-face frame take "
              f"{frame_ms['int8']:.1f} ms "
              f"in int8 and {frame_ms['float32']:.1f} ms in float32 (median of {rounds}); float32 is chosen only "
              f"when at least {100 * (1 - FLOAT_MARGIN):.0f} % faster")
    return PrecisionChoice(chosen, reason, {p: round(v, 3) for p, v in frame_ms.items()})
