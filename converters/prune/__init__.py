"""Magnitude pruning of the FaceNet embedder with distillation recovery, then full int8.

Pipeline (:func:`prune_embedder`, CLI ``edgeface prune``):

1. the float **teacher**: the shipped FaceNet as a tf_keras model (``facenet-casia`` rebuilt from its frozen
   graph by :mod:`facenet_graph`, ``facenet-msceleb`` from its h5 by :mod:`facenet_keras`);
2. training **crops**: LFW ``peopleDevTrain.txt`` identities only (``pairsDevTest.txt`` stays clean), the
   central face found by the float detector and cut with the embedder manifest's crop recipe
   (:func:`edgeface.embed.face_crop`, the code the device runs), cached as uint8 ``.npy``;
3. :func:`prune_low_magnitude_model`: a *copy* of the teacher (``clone_model`` with a clone function shares
   the original layers, so pruning the teacher itself would prune the teacher) with only ``Conv2D`` and
   ``Dense`` wrapped by tfmot's ``prune_low_magnitude`` (BatchNorm frozen in inference mode, Dropout off);
4. :func:`distill_pruned`: recovery by distillation, loss ``1 - cos(student, teacher)`` on the crops while
   the sparsity ramps to the target (polynomial schedule) or is applied at once (constant schedule);
5. optional prune-preserving QAT (:func:`apply_pqat`, tfmot's ``Default8BitPrunePreserveQuantizeScheme``)
   with every quantizer range seeded from a float calibration pass (:func:`seed_quantization_ranges`; tfmot's
   own [-6, 6] start clips FaceNet's activations);
6. :func:`strip_pruning_model`, then :func:`quantize_int8` with the converter settings of
   :mod:`embedder` (per-channel int8 keeps exact zeros, so the sparsity survives post-training quantization),
   a manifest with ``embedder.pruning`` and a threshold calibrated on LFW DevTrain pairs.

Modules by role: :mod:`.options` (``PruneOptions``, ``PruneError``), :mod:`.data` (crops), :mod:`.teacher`,
:mod:`.wrapping` (tfmot pruning wrappers), :mod:`.distillation`, :mod:`.pqat` (prune-preserving QAT and its
fixes), :mod:`.export` (int8 TFLite + manifest), :mod:`.report` (sizes, sparsity, cosine statistics),
:mod:`.pipeline` (``prune_embedder``). Every public name is importable from ``edgeface.converters.prune``.

Pruning makes neither the TFLite file smaller nor inference faster (TFLite stores dense tensors); it makes
the *compressed* model smaller, which is what a firmware image or an OTA update pays for.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported: tfmot needs tf_keras

from .data import calibration_crops, devtrain_files, make_face_crops, normalize_crops
from .distillation import cosine_distance, distill, distill_pruned
from .export import embed_tflite, pruned_manifest, quantize_int8, write_model
from .options import KERAS_FAMILIES, SCHEDULES, SPARSITY_PRESETS, PruneError, PruneOptions
from .pipeline import prune_embedder
from .pqat import (
    apply_pqat,
    check_same_wiring,
    qat_kernels,
    seed_quantization_ranges,
)
from .report import cosine_stats, gzip_size, tflite_weight_sparsity
from .teacher import embed_keras, load_teacher, teacher_embeddings
from .wrapping import (
    kernel_sparsity,
    load_pruned_model,
    prunable_layers,
    prune_low_magnitude_model,
    pruning_schedule,
    strip_pruning_model,
)

__all__ = [
    "KERAS_FAMILIES", "SCHEDULES", "SPARSITY_PRESETS", "PruneError", "PruneOptions", "apply_pqat",
    "calibration_crops", "check_same_wiring", "cosine_distance", "cosine_stats", "devtrain_files", "distill",
    "distill_pruned", "embed_keras", "embed_tflite", "gzip_size", "kernel_sparsity", "load_pruned_model",
    "load_teacher", "make_face_crops", "normalize_crops", "prunable_layers", "prune_embedder",
    "prune_low_magnitude_model", "pruned_manifest", "pruning_schedule", "qat_kernels", "quantize_int8",
    "seed_quantization_ranges", "strip_pruning_model", "teacher_embeddings", "tflite_weight_sparsity",
    "write_model",
]
