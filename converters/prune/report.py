"""What a pruning run measures: compressed size, weight zeros in the TFLite file, cosine statistics."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgeface.evaluate import cosine_stats  # noqa: F401  (re-exported: one home for the statistics)


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of ``path`` compressed with gzip level 9 (what an OTA update or a firmware image pays)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def tflite_weight_sparsity(path: str | os.PathLike) -> dict:
    """Zero fraction of the int8 constant tensors of rank >= 2 (the kernels) inside a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))  # not allocated: only constant tensors have data
    zeros = total = tensors = 0
    for d in it.get_tensor_details():
        if d["dtype"] != np.int8 or len(d["shape"]) < 2:
            continue
        try:
            t = it.get_tensor(d["index"])
        except ValueError:
            continue  # an activation
        zeros += int(np.count_nonzero(t == 0))
        total += t.size
        tensors += 1
    return {"overall": zeros / total if total else 0.0, "tensors": tensors, "weights": total}
