"""Full-int8 export of a pruned model with the embedder's converter settings, and its manifest."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeface import preprocess

from .. import common, embedder, quantize


def quantize_int8(model, calibration_crops: Sequence[np.ndarray], input_dtype: str = "uint8",
                  desc: str = "calibrating pruned model", mean: float = embedder.MEAN) -> bytes:
    """Full-integer TFLite with the settings of every int8 model (:mod:`quantize`: uint8 input, float32 output);
    the calibration crops are normalized with ``mean`` (the model's input normalization)."""
    import tensorflow as tf

    if input_dtype not in ("uint8", "int8"):
        raise ValueError(f"input_dtype must be 'int8' or 'uint8', got {input_dtype!r}")
    if not len(calibration_crops):
        raise ValueError("int8 needs calibration crops; got none")
    samples = [preprocess.normalize(c, mean, embedder.STD)[None] for c in calibration_crops]

    def representative():
        for x in common.progress(samples, desc):
            yield [x]

    # static batch 1, like embedder.py: a dynamic batch is rejected by the Edge TPU compiler
    converter = tf.lite.TFLiteConverter.from_keras_model(embedder.fixed_batch(model))
    quantize.configure_full_int8(converter, representative, input_type=input_dtype)
    return converter.convert()


def write_model(tflite: bytes, dst: Path, manifest: dict) -> Path:
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.manifest import write_manifest

    common.atomic_write_bytes(dst, tflite)
    (out,) = Interpreter(str(dst)).get_output_details()
    manifest = json.loads(json.dumps(manifest))
    manifest["outputs"] = {"embedding": out["name"]}
    write_manifest(dst, manifest)
    return dst


def pruned_manifest(base: dict, pruning: dict, precision: str, dtype: str) -> dict:
    """The unpruned model's manifest with the pruned model's precision, input dtype and ``embedder.pruning``."""
    data = json.loads(json.dumps(base))
    for k in ("model_file", "sha256", "format"):
        data.pop(k, None)
    data["precision"] = precision
    data["input"]["dtype"] = dtype
    data["description"] = f"{base.get('description', base['family'])}, pruned to " \
                          f"{pruning['target_sparsity']:.0%} sparsity + distillation"
    data["embedder"]["pruning"] = pruning
    data["embedder"].update(embedder.PROVISIONAL_THRESHOLD)
    data["embedder"].pop("operating_points", None)
    for key in ("embedding_mean", "embedding_mean_source"):  # the unpruned model's centre is not this model's
        data["embedder"].pop(key, None)
    data["converter_version"] = common.CONVERTER_VERSION
    return data


def embed_tflite(path: str | os.PathLike, crops: np.ndarray, desc: str = "embedding (tflite)") -> np.ndarray:
    """L2-normalized embeddings of uint8 crops by an edgeface embedder model (through its manifest)."""
    from edgeface.embed import FaceEmbedder

    emb = FaceEmbedder(path)
    return np.stack([emb.embed_crop(c) for c in common.progress(list(crops), desc)])
