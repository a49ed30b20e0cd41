"""``prune_embedder``: the whole pruning run, from a models folder to a pruned int8 model and report."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from edgeface.paths import cache_root

from .. import common, embedder
from .data import calibration_crops, devtrain_files, make_face_crops
from .distillation import distill, distill_pruned
from .export import embed_tflite, pruned_manifest, quantize_int8, write_model
from .options import PruneError, PruneOptions
from .pqat import apply_pqat, qat_kernels, seed_quantization_ranges
from .report import cosine_stats, gzip_size, tflite_weight_sparsity
from .teacher import embed_keras, load_teacher, teacher_embeddings
from .wrapping import kernel_sparsity, load_pruned_model, prune_low_magnitude_model, strip_pruning_model

log = logging.getLogger(__name__)


def prune_embedder(models_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   options: PruneOptions = PruneOptions(),  # noqa: B008 - frozen dataclass: sharing it is safe
                   lfw_root: Optional[str | os.PathLike] = None,
                   cache_dir: Optional[str | os.PathLike] = None, calibration: Optional[np.ndarray] = None,
                   calibrate_threshold: bool = True, save_float: bool = False,
                   pruned_model: Optional[str | os.PathLike] = None) -> dict:
    """Prune the int8 embedder of ``models_dir`` (its float detector makes the crops) into ``out_dir``.

    Writes ``<family>_int8_pruned<NN>.tflite`` + manifest (and ``..._float32_pruned<NN>`` with
    ``save_float``) and ``pruning-<NN>.json``, a report with sparsity, raw and gzip sizes, cosine to the float
    teacher on held-out crops and the training losses. Returns that report.

    ``pruned_model``: the ``<family>_float32_pruned<NN>.h5`` a previous run wrote (same family, same sparsity):
    pruning and distillation are skipped, e.g. to add prune-preserving QAT (``options.pqat_steps``) to it.
    """
    from edgeface.calibration_data import builder
    from edgeface.manifest import read_manifest, resolve_models

    t0 = time.time()
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    if not isinstance(options, PruneOptions):
        raise PruneError(f"options must be a PruneOptions, got {type(options).__name__}")
    if pruned_model is not None and not Path(pruned_model).is_file():
        raise PruneError(f"{pruned_model}: no such pruned model")
    det_float, emb_float = resolve_models(models_dir, "float32")
    _, emb_int8 = resolve_models(models_dir, "int8")
    base = read_manifest(emb_int8)
    family = base["family"]
    recipe = base["embedder"]["crop"]
    cache = Path(cache_dir) if cache_dir else cache_root() / "prune"
    lfw = Path(lfw_root) if lfw_root else builder.default_data_root() / "lfw"

    files = devtrain_files(lfw, options.num_crops, options.seed)
    crops = make_face_crops(files, det_float, recipe, cache)
    if len(crops) <= options.holdout + options.batch_size:
        raise PruneError(f"only {len(crops)} face crops for holdout={options.holdout} and "
                         f"batch_size={options.batch_size}")
    train, held = crops[: len(crops) - options.holdout], crops[len(crops) - options.holdout:]
    teacher = load_teacher(family, cache / "downloads")
    key = hashlib.sha256(crops.tobytes()).hexdigest()[:12] + "-" + base["upstream"]["sha256"][:12]
    targets = teacher_embeddings(teacher, crops, cache / f"teacher-{key}.npy")
    log.info("%d crops (%d train, %d held out), teacher %s", len(crops), len(train), len(held), family)

    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"pruned{int(round(options.target_sparsity * 100))}"
    stem = family.replace("-", "_")
    t_train = time.time()
    if pruned_model is None:
        pruned = prune_low_magnitude_model(teacher, options)
        losses = distill_pruned(pruned, train, targets[: len(train)], options)
        stripped = strip_pruning_model(pruned)
        stripped.save(out_dir / f"{stem}_float32_{tag}.h5", include_optimizer=False)  # for PQAT / further tuning
    else:  # a previous run's stripped model: skip pruning (e.g. to add PQAT)
        stripped = load_pruned_model(pruned_model)
        losses = []
    train_seconds = time.time() - t_train
    sparsity = kernel_sparsity(stripped)
    if pruned_model is not None and abs(sparsity["overall"] - options.target_sparsity) > 0.02:
        raise PruneError(f"{pruned_model}: kernel sparsity {sparsity['overall']:.3f}, not the target "
                         f"{options.target_sparsity}")
    if calibration is None:
        calibration = calibration_crops(det_float, recipe)
    pqat_losses = []
    pqat = None
    export = stripped
    if options.pqat_steps:
        t_pqat = time.time()
        qat = apply_pqat(stripped)
        seeding = seed_quantization_ranges(qat, np.asarray(calibration), batch_size=options.batch_size)
        seeded_cos = cosine_stats(embed_keras(qat, held, desc="held-out seeded QAT"), targets[len(train):])
        log.info("seeded QAT model, before training: cosine to the float teacher %s", seeded_cos)
        zeros_before = sum(int(np.count_nonzero(k == 0)) for k in qat_kernels(qat).values())
        pqat_losses = distill(qat, train, targets[: len(train)], options.pqat_steps, options,
                              desc="prune-preserving QAT", learning_rate=options.pqat_rate)
        kernels = qat_kernels(qat)
        zeros_after = sum(int(np.count_nonzero(k == 0)) for k in kernels.values())
        pqat = {"seeding": seeding, "seeded_keras_cosine": seeded_cos,
                "trained_keras_cosine": cosine_stats(embed_keras(qat, held, desc="held-out trained QAT"),
                                                     targets[len(train):]),
                "kernel_zeros_before": zeros_before, "kernel_zeros_after": zeros_after,
                "kernel_sparsity_after": round(zeros_after / sum(k.size for k in kernels.values()), 4),
                "learning_rate": options.pqat_rate, "seconds": round(time.time() - t_pqat, 1)}
        export = qat

    pruning = {"target_sparsity": float(options.target_sparsity), "schedule": options.schedule,
               "kernel_sparsity": round(sparsity["overall"], 4), "kernels": sparsity["kernels"],
               "recovery": f"distillation from the float {family}, cosine loss, {options.steps} steps x "
                           f"{options.batch_size} crops of {len(train)} LFW peopleDevTrain faces"
                           if pruned_model is None else f"a previous run's pruned model ({Path(pruned_model).name})",
               "pqat_steps": options.pqat_steps,
               **({"pqat": "tfmot Default8BitPrunePreserveQuantizeScheme, quantizer ranges seeded from a float "
                           "calibration pass, cosine loss"} if options.pqat_steps else {}),
               "tool": f"tensorflow-model-optimization "
                                                         f"{common.package_version('tensorflow-model-optimization')}"}
    base_float = read_manifest(emb_float)
    written = {}
    dst = out_dir / f"{stem}_int8_{tag}.tflite"
    written["int8"] = write_model(quantize_int8(export, calibration), dst,
                                   dict(pruned_manifest(base, pruning, "int8", base["input"]["dtype"]),
                                        calibration=dict(base.get("calibration", {}), num_crops=len(calibration))))
    if save_float:
        import tensorflow as tf

        flt = tf.lite.TFLiteConverter.from_keras_model(embedder.fixed_batch(stripped)).convert()
        written["float32"] = write_model(flt, out_dir / f"{stem}_float32_{tag}.tflite",
                                          pruned_manifest(base_float, pruning, "float32", "float32"))
    teacher_held = targets[len(train):]
    report = {"family": family, "options": options.describe(), "kernel_sparsity": {
        k: v for k, v in sparsity.items() if k != "layers"}, "losses": {
        "first": round(float(np.mean(losses[:10])), 4) if losses else None,
        "last": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "pqat_first": round(float(np.mean(pqat_losses[:10])), 4) if pqat_losses else None,
        "pqat_last": round(float(np.mean(pqat_losses[-10:])), 4) if pqat_losses else None},
        "train_seconds": round(train_seconds, 1), "pruned_from": str(pruned_model) if pruned_model else None,
        "pqat": pqat,
        "cosine_to_teacher": {"pruned_keras_float": cosine_stats(embed_keras(stripped, held), teacher_held)},
        "models": {}}
    for precision, path in [("unpruned_int8", emb_int8), *[(f"pruned_{p}", w) for p, w in written.items()]]:
        report["models"][precision] = {"file": str(path), "bytes": path.stat().st_size,
                                       "gzip_bytes": gzip_size(path),
                                       "int8_weight_zeros": round(tflite_weight_sparsity(path)["overall"], 4)
                                       if "int8" in precision else None}
        report["cosine_to_teacher"][precision] = cosine_stats(embed_tflite(path, held, f"held-out {precision}"),
                                                              teacher_held)
    report["gzip_ratio_int8"] = round(report["models"]["pruned_int8"]["gzip_bytes"]
                                      / report["models"]["unpruned_int8"]["gzip_bytes"], 4)
    if calibrate_threshold and (lfw / "pairsDevTrain.txt").is_file():
        from ..thresholds import calibrate_min_cosine_similarity

        for precision, path in written.items():
            calibrate_min_cosine_similarity(models_dir / Path(resolve_models(models_dir, precision)[0]).name,
                                            path, lfw)
    report["seconds"] = round(time.time() - t0, 1)
    tmp = out_dir / f"pruning-{tag}.json.part"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_dir / f"pruning-{tag}.json")
    return report
