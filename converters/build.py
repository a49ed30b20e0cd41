"""``edgeface build``: float and int8 detector and embedder models from upstream weights, in one folder.

The folder gets ``<model>.tflite`` + ``<model>.json`` (manifest) per model and ``models.json``, the index
that tells the runtime which files are the default detector and embedder for each precision.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from edgeface import blazeface
from edgeface.calibration_data import builder
from edgeface.detect import FaceDetector, resolve_detector
from edgeface.embed import face_crop, needs_landmark_model
from edgeface.errors import OptionError
from edgeface.landmarks import FaceLandmarker
from edgeface.manifest import INDEX
from edgeface.paths import cache_root

from . import calibration, common, detector, detector_config, embedder, metadata, onet
from .stages import stage
from .thresholds import (
    THRESHOLD_PAIRS_FILE,
    calibrate_embedding_mean,
    calibrate_min_cosine_similarity,
    calibrate_open_set_points,
)

log = logging.getLogger(__name__)

DETECTORS = ("short_range", "full_range")
DEFAULT_DETECTOR = "short_range"


def build_models(out_dir: str | os.PathLike, embedder_family: str = embedder.DEFAULT,
                 detectors: Sequence[str] = DETECTORS, default_detector: str = DEFAULT_DETECTOR,
                 calibration_folder: Optional[str] = None, count: int = builder.DEFAULT_COUNT,
                 seed: int = builder.DEFAULT_SEED, cache_dir: Optional[str] = None,
                 threshold: Optional[dict] = None, calibrate_threshold: bool = True,
                 threshold_pairs: int = 600, qat_steps: Optional[int] = None,
                 bias_correction: Optional[bool] = None, center_embeddings: Optional[bool] = None) -> dict:
    """Build every model into ``out_dir`` and write the index. Returns the index dict.

    ``qat_steps``: quantization-aware training steps for the int8 embedder (None: ``QAT_STEPS`` for the
    families in :data:`embedder.QAT_FAMILIES`, 0 for the others; 0: post-training int8 only). QAT trains on
    LFW DevTrain people and needs LFW; without it the int8 model is post-training quantized (logged).
    ``bias_correction``: correct the post-training int8 embedder's conv biases against its float model on the
    calibration crops (None: :data:`embedder.BIAS_CORRECTION_FAMILIES` decides; never after QAT).
    With ``calibrate_threshold`` the embedder manifests also get open-set operating points
    (:mod:`.openset`), and with ``center_embeddings`` (None: :data:`embedder.CENTER_FAMILIES` decides; it needs
    ``calibrate_threshold``) an ``embedding_mean`` measured before the thresholds
    (:func:`.thresholds.calibrate_embedding_mean`).
    """
    if qat_steps is not None and qat_steps < 0:  # before any work: a typo must not cost a build
        raise OptionError(f"qat_steps must be >= 0 (0: post-training int8), got {qat_steps}")
    embedder.check_bias_correction(embedder_family, bias_correction)
    if center_embeddings and not calibrate_threshold:
        raise OptionError("centring the embeddings needs the threshold calibration (the thresholds must be measured "
                          "on centred embeddings): drop --no-threshold-calibration, or add --no-center-embeddings")
    if center_embeddings is None:
        center_embeddings = embedder_family in embedder.CENTER_FAMILIES and calibrate_threshold
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else cache_root()
    if default_detector not in detectors:
        raise ValueError(f"default detector {default_detector!r} is not among the built {list(detectors)}")
    embedder.source(embedder_family)  # validates the name before any work
    cset = (builder.folder(calibration_folder, count, seed) if calibration_folder
            else calibration.default_set(count, seed, cache))
    log.info("calibration set %s (%d images)", cset.id, len(cset.files))
    stage(f"reading {len(cset.files)} calibration images ({cset.id})")
    images = builder.load_images(cset, lambda it: common.progress(it, "reading calibration images",
                                                                   len(cset.files)))
    index: dict = {"float32": {}, "int8": {}, "calibration": cset.describe()}
    for name in detectors:
        stage(f"detector {name}: float32 export, int8 conversion")
        spec = blazeface.spec_for(name)
        f = detector.export_float(spec, out)
        q = detector.quantize(spec, images, out, cset.describe())
        if name == default_detector:
            index["float32"]["detector"], index["int8"]["detector"] = f.name, q.name
        index.setdefault("detectors", {})[name] = {"float32": f.name, "int8": q.name}
        log.info("detector %s: float %s, int8 %s (%.0f KB)", name, f.name, q.name, q.stat().st_size / 1024)
    detector_config.add_detector_configs(out, index, images)  # box transforms + the default "auto"
    stage("landmarks onet: float32 rebuild, int8 conversion")
    index["landmarks"] = _build_landmarks(out, images, out / index["float32"]["detector"], cset.describe())
    # an interim index: the crops of QAT, threshold calibration and held-out reports find the landmark model
    # through the folder's models.json, as the device does (rewritten complete at the end)
    common.write_index(out, index)
    stage(f"embedder {embedder_family}: float32 conversion")
    built = embedder.build(embedder_family, out, None, None, cache, threshold=threshold,
                           precisions=("float32",))
    float_det = FaceDetector(out / index["float32"]["detector"])
    recipe = embedder.default_crop(embedder_family)
    landmarker = (FaceLandmarker(out / index["landmarks"][onet.NAME]["float32"]) if needs_landmark_model(recipe)
                  else None)
    stage("embedder calibration crops (float32 detector)")
    crops = builder.face_crops(
        list(common.progress(images, "cropping calibration faces")),
        float_det.detect, lambda img, face: face_crop(img, face.box, face.keypoints, recipe, landmarker))
    log.info("embedder calibration: %d face crops from %d images", len(crops), len(images))
    if qat_steps is None:
        qat_steps = QAT_STEPS if embedder_family in embedder.QAT_FAMILIES else 0
    lfw = builder.default_data_root() / "lfw"
    int8_model, int8_extra = None, None
    if qat_steps > 0:
        if not (lfw / "peopleDevTrain.txt").is_file():
            log.warning("LFW not found at %s: no quantization-aware training, post-training int8 only", lfw)
        else:
            stage(f"embedder {embedder_family}: quantization-aware training ({qat_steps} steps)")
            int8_model, int8_extra = _train_qat(embedder_family, out / index["float32"]["detector"], recipe,
                                                crops, lfw, cache, qat_steps)
    if bias_correction and int8_model is not None:
        log.warning("bias correction skipped: the int8 embedder is quantization-aware trained")
    stage(f"embedder {embedder_family}: int8 conversion on {len(crops)} face crops"
          + (f" after {qat_steps} QAT steps" if int8_model is not None else ""))
    built.update(embedder.build(embedder_family, out, crops, dict(cset.describe(), num_crops=len(crops)),
                                cache, threshold=threshold, precisions=("int8",), int8_model=int8_model,
                                int8_extra=int8_extra,
                                bias_correction=bias_correction if int8_model is None else False))
    for precision, path in built.items():
        index[precision]["embedder"] = path.name
    if calibrate_threshold:
        if (lfw / THRESHOLD_PAIRS_FILE).is_file():
            if center_embeddings:
                stage(f"embedding mean (float32) on LFW {THRESHOLD_PAIRS_FILE}")
                calibrate_embedding_mean(resolve_detector(out, "float32"),
                                         [out / index[p]["embedder"] for p in ("float32", "int8")], lfw,
                                         threshold_pairs)
            for precision in ("float32", "int8"):
                # the folder's default detector configuration (``auto``), as the device and `eval` run it
                det = resolve_detector(out, precision)
                stage(f"threshold calibration ({precision}, detector {det.name}) on LFW {THRESHOLD_PAIRS_FILE}")
                calibrate_min_cosine_similarity(det, out / index[precision]["embedder"], lfw, threshold_pairs)
                calibrate_open_set_points(det, out / index[precision]["embedder"], lfw)
        else:
            log.warning("LFW not found at %s: min_cosine_similarity stays provisional", lfw)
    for path in common.index_models(out, index=index):  # last: it changes the files and their sha256
        metadata.write_metadata(path)
    index["build_seconds"] = round(time.time() - t0, 1)
    tmp = out / (INDEX + ".part")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, out / INDEX)
    log.info("built models into %s in %.0f s", out, time.time() - t0)
    return index


def _build_landmarks(out: Path, images, float_detector: Path, calibration: dict) -> dict:
    """O-Net float32 + int8 (calibrated on O-Net crops of the calibration faces); the index's ``landmarks``."""
    crops = onet.face_crops(list(common.progress(images, "cropping landmark calibration faces")),
                            FaceDetector(float_detector).detect)
    built = onet.build(out, crops, calibration)
    log.info("landmarks onet: float %s, int8 %s (%d calibration crops)", built["float32"].name,
             built["int8"].name, len(crops))
    return {"default": onet.NAME, onet.NAME: {p: path.name for p, path in built.items()}}


#: Default quantization-aware training steps (batch 16) for the families in ``embedder.QAT_FAMILIES``.
QAT_STEPS = 200


def _train_qat(family: str, detector_path: Path, recipe: dict, calibration: list, lfw: Path, cache: Path,
               steps: int) -> tuple:
    """(QAT Keras model, manifest ``quantization`` section) for the int8 embedder."""
    import numpy as np

    from . import qat

    options = qat.QatOptions(steps=steps)
    # the teacher is the post-training int8 source (channels equalized, exact input: the same float function);
    # the student starts from its weights and every step normalizes as its manifest will say
    mean = embedder.int8_input_mean(family)
    teacher = embedder.keras_model(family, embedder.upstream_file(family, cache), crops=calibration,
                                   exact_input=mean == embedder.EXACT_INPUT_MEAN)
    train = qat.training_crops(lfw, detector_path, recipe, options, cache / "qat")
    result = qat.train_qat(teacher, train, np.stack(calibration), options, mean=mean)
    section = {"method": "channels equalized around each PReLU, then quantization-aware training distilled "
                         "from the float model (tfmot default 8-bit)",
               "steps": options.steps, "batch_size": options.batch_size, "learning_rate": options.learning_rate,
               "training_crops": result.num_crops, "training_data": "LFW peopleDevTrain, aligned crops",
               "final_loss": round(float(np.mean(result.losses[-20:])), 5) if result.losses else None,
               "seconds": result.seconds}
    return result.model, section
