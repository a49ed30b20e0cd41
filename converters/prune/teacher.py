"""The float teacher: the shipped FaceNet as a tf_keras model, and its (cached) embeddings."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from edgeface.embed import l2_normalize

from .. import common, embedder
from .data import normalize_crops
from .options import KERAS_FAMILIES, PruneError


def load_teacher(family: str, cache_dir: str | os.PathLike):
    """The float FaceNet of ``family`` as a tf_keras model (un-normalized embedding, input (x-127.5)/128)."""
    if family not in KERAS_FAMILIES:
        raise PruneError(f"embedder family {family!r} cannot be pruned; Keras rebuilds exist for {KERAS_FAMILIES}")
    weights = embedder.upstream_file(family, Path(cache_dir))
    if family == "facenet-casia":
        from .. import facenet_graph

        return facenet_graph.load_facenet_graph_keras(weights)
    from .. import facenet_keras

    return facenet_keras.load_facenet_keras(weights)


def embed_keras(model, crops: np.ndarray, batch_size: int = 32, desc: str = "embedding",
                mean: float = embedder.MEAN) -> np.ndarray:
    """L2-normalized embeddings of uint8 crops by a Keras model, in batches (with a progress bar); the crops
    are normalized with ``mean`` (:func:`.data.normalize_crops`)."""
    out = []
    starts = range(0, len(crops), batch_size)
    for s in common.progress(starts, desc, total=len(starts)):
        out.append(model(normalize_crops(crops[s:s + batch_size], mean), training=False).numpy())
    return l2_normalize(np.concatenate(out))


def teacher_embeddings(teacher, crops: np.ndarray, cache_path: Optional[Path] = None,
                       mean: float = embedder.MEAN) -> np.ndarray:
    """The teacher's L2-normalized embeddings of ``crops`` (normalized with ``mean``), computed once (cached
    beside the crops)."""
    if cache_path is not None and Path(cache_path).is_file():
        emb = np.load(cache_path)
        if len(emb) == len(crops):
            return emb
    emb = embed_keras(teacher, crops, desc="teacher embeddings", mean=mean)
    if cache_path is not None:
        np.save(cache_path, emb)
    return emb
