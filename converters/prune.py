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

Pruning makes neither the TFLite file smaller nor inference faster (TFLite stores dense tensors); it makes
the *compressed* model smaller, which is what a firmware image or an OTA update pays for.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from edgeface import preprocess  # noqa: E402

from . import common, embedder, quantize  # noqa: E402

log = logging.getLogger(__name__)

SCHEDULES = ("polynomial", "constant")
SPARSITY_PRESETS = (0.3, 0.5, 0.75)
KERAS_FAMILIES = ("facenet-casia", "facenet-msceleb")


@dataclass(frozen=True)
class PruneOptions:
    """Validated settings of one pruning run (every bad value raises ``ValueError`` naming the field).

    ``target_sparsity``: fraction of zero weights in every Conv2D/Dense kernel (presets 0.3 / 0.5 / 0.75).
    ``schedule``: ``polynomial`` ramps from 0 to the target over ``ramp_fraction`` of the steps (updates every
    ``frequency`` steps); ``constant`` prunes to the target at step 0 and then only recovers.
    ``steps``, ``batch_size``, ``learning_rate`` (Adam, cosine decay to 0): the distillation.
    ``num_crops``: LFW DevTrain face crops (``holdout`` of them are never trained on: the cosine check).
    ``pqat_steps``: prune-preserving QAT steps after pruning (0: post-training int8 only); the quantizer
    ranges are seeded from the calibration crops first (see :func:`apply_pqat`: unseeded ranges plus tfmot's
    concat reordering gave cosine 0.23 after 60 steps). ``pqat_learning_rate``: default ``learning_rate / 10``. Post-training int8
    already keeps the zeros exactly.
    """
    target_sparsity: float = 0.5
    schedule: str = "polynomial"
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-4
    ramp_fraction: float = 0.6
    frequency: Optional[int] = None
    num_crops: int = 2000
    holdout: int = 200
    pqat_steps: int = 0
    pqat_learning_rate: Optional[float] = None
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"PruneOptions.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.target_sparsity, (int, float)) or not 0.0 < float(self.target_sparsity) < 1.0:
            bad("target_sparsity", "must be a fraction in (0, 1), e.g. one of the presets "
                                   f"{SPARSITY_PRESETS}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}")
        for name in ("steps", "batch_size", "num_crops"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        for name in ("holdout", "pqat_steps", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be a non-negative integer")
        if self.holdout >= self.num_crops:
            bad("holdout", f"must be smaller than num_crops ({self.num_crops})")
        if not isinstance(self.learning_rate, (int, float)) or not 0.0 < self.learning_rate < 1.0:
            bad("learning_rate", "must be in (0, 1)")
        if not isinstance(self.ramp_fraction, (int, float)) or not 0.0 < self.ramp_fraction <= 1.0:
            bad("ramp_fraction", "must be in (0, 1]")
        if self.pqat_learning_rate is not None and (not isinstance(self.pqat_learning_rate, (int, float))
                                                    or not 0.0 < self.pqat_learning_rate < 1.0):
            bad("pqat_learning_rate", "must be in (0, 1) or None (learning_rate / 10)")
        if self.frequency is not None and (not isinstance(self.frequency, int) or self.frequency < 1):
            bad("frequency", "must be a positive integer or None")

    @property
    def update_frequency(self) -> int:
        return self.frequency or max(1, self.steps // 30)

    @property
    def pqat_rate(self) -> float:
        """PQAT fine-tunes an already recovered model: by default a tenth of the pruning learning rate."""
        return float(self.pqat_learning_rate or self.learning_rate / 10)

    @property
    def end_step(self) -> int:
        return max(1, int(round(self.steps * self.ramp_fraction)))

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# --------------------------------------------------------------------------- teacher


def load_teacher(family: str, cache_dir: str | os.PathLike):
    """The float FaceNet of ``family`` as a tf_keras model (un-normalized embedding, input (x-127.5)/128)."""
    if family not in KERAS_FAMILIES:
        raise ValueError(f"embedder family {family!r} cannot be pruned; Keras rebuilds exist for {KERAS_FAMILIES}")
    weights = embedder.upstream_file(family, Path(cache_dir))
    if family == "facenet-casia":
        from . import facenet_graph

        return facenet_graph.load_facenet_graph_keras(weights)
    from . import facenet_keras

    return facenet_keras.load_facenet_keras(weights)


# --------------------------------------------------------------------------- data


def devtrain_files(lfw_root: str | os.PathLike, count: int, seed: int) -> list[Path]:
    """``count`` images (sorted, chosen with ``seed``) of the identities in LFW ``peopleDevTrain.txt``."""
    root = Path(lfw_root)
    listing = root / "peopleDevTrain.txt"
    if not listing.is_file():
        raise ValueError(f"{listing}: not found; pruning trains on LFW peopleDevTrain identities only")
    files = []
    for line in listing.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            name = parts[0]
            files += [root / "images_deepfunneled" / name / f"{name}_{i:04d}.jpg" for i in range(1, int(parts[1]) + 1)]
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise ValueError(f"{root}: no images of the peopleDevTrain.txt identities under images_deepfunneled/")
    if len(files) > count:
        rng = np.random.default_rng(seed)
        files = [files[i] for i in sorted(rng.choice(len(files), size=count, replace=False))]
    return files


def make_face_crops(files: Sequence[Path], detector_path: str | os.PathLike, recipe: dict,
                    cache_dir: Optional[str | os.PathLike] = None) -> np.ndarray:
    """uint8 (N, size, size, 3) crops: the central face of each file (float detector, ``recipe``).

    Files without a face are skipped. With ``cache_dir`` the array is cached as ``crops-<key>.npy``, keyed by
    the files, the detector's sha256 and the recipe.
    """
    from edgeface.detect import FaceDetector
    from edgeface.lfw import crop_files
    from edgeface.manifest import sha256_file

    key = hashlib.sha256(json.dumps([[str(f) for f in files], sha256_file(detector_path),
                                     recipe], sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"crops-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    det = FaceDetector(detector_path)
    by_file = crop_files(det.detect, files, recipe, lambda fs: common.progress(fs, "cropping DevTrain faces"))
    crops = [c for c in by_file.values() if c is not None]  # unreadable files are logged and skipped
    if not crops:
        raise ValueError(f"no face found in any of the {len(files)} training images")
    out = np.stack(crops).astype(np.uint8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".part.npy"), out)
        os.replace(path.with_suffix(".part.npy"), path)
    return out


def _normalize(crops: np.ndarray) -> np.ndarray:
    return (np.asarray(crops, np.float32) - embedder.MEAN) / embedder.STD


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-10)


def embed_keras(model, crops: np.ndarray, batch_size: int = 32, desc: str = "embedding") -> np.ndarray:
    """L2-normalized embeddings of uint8 crops by a Keras model, in batches (with a progress bar)."""
    out = []
    starts = range(0, len(crops), batch_size)
    for s in common.progress(starts, desc, total=len(starts)):
        out.append(model(_normalize(crops[s:s + batch_size]), training=False).numpy())
    return _l2(np.concatenate(out))


def teacher_embeddings(teacher, crops: np.ndarray, cache_path: Optional[Path] = None) -> np.ndarray:
    """The teacher's L2-normalized embeddings of ``crops``, computed once (cached beside the crops)."""
    if cache_path is not None and Path(cache_path).is_file():
        emb = np.load(cache_path)
        if len(emb) == len(crops):
            return emb
    emb = embed_keras(teacher, crops, desc="teacher embeddings")
    if cache_path is not None:
        np.save(cache_path, emb)
    return emb


# --------------------------------------------------------------------------- pruning


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def pruning_schedule(options: PruneOptions):
    sparsity = _tfmot().sparsity.keras
    if options.schedule == "constant":
        return sparsity.ConstantSparsity(float(options.target_sparsity), begin_step=0,
                                         frequency=options.update_frequency)
    return sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(options.target_sparsity),
                                    begin_step=0, end_step=options.end_step, frequency=options.update_frequency)


def prunable_layers(model) -> list[str]:
    """Names of the layers that get pruned: every ``Conv2D`` and ``Dense`` (not depthwise, not BN)."""
    keras = _keras()
    return [l.name for l in model.layers
            if type(l) in (keras.layers.Conv2D, keras.layers.Dense)]


def _keras():
    import tf_keras

    return tf_keras


def prune_low_magnitude_model(model, options: PruneOptions):
    """A pruning-wrapped *copy* of ``model``: Conv2D/Dense wrapped, BatchNorm frozen, Dropout off.

    ``model`` is never modified and shares no variable with the result.
    """
    keras = _keras()
    tfmot = _tfmot()
    schedule = pruning_schedule(options)
    wrap = set(prunable_layers(model))
    if not wrap:
        raise ValueError(f"model {model.name!r} has no Conv2D or Dense layer to prune")

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["trainable"] = False  # tf_keras: a frozen BN runs in inference mode
        if isinstance(layer, keras.layers.Dropout):
            config["rate"] = 0.0  # distillation matches the teacher's inference-time output
        new = layer.__class__.from_config(config)
        if layer.name in wrap:
            return tfmot.sparsity.keras.prune_low_magnitude(new, pruning_schedule=schedule)
        return new

    pruned = keras.models.clone_model(model, clone_function=clone)
    # copy the weights layer by layer (the wrappers add mask/threshold variables of their own)
    for layer in model.layers:
        target = pruned.get_layer(layer.name if layer.name not in wrap else "prune_low_magnitude_" + layer.name)
        inner = getattr(target, "layer", target)
        if layer.weights:
            inner.set_weights(layer.get_weights())
    return pruned


def strip_pruning_model(pruned):
    """tfmot ``strip_pruning``: the plain Keras model with the masked (zeroed) weights baked in."""
    return _tfmot().sparsity.keras.strip_pruning(pruned)


def load_pruned_model(path: str | os.PathLike):
    """A stripped pruned model saved by :func:`prune_embedder` (``<family>_float32_pruned<NN>.h5``)."""
    from .facenet_keras import ScaleSum

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such pruned model")
    return _keras().models.load_model(path, custom_objects={"ScaleSum": ScaleSum}, compile=False)


def kernel_sparsity(model) -> dict:
    """Zero fraction of every Conv2D/Dense kernel: ``{"overall": f, "min": f, "max": f, "layers": {...}}``."""
    layers = {}
    zeros = total = 0
    names = prunable_layers_set(model)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if inner.name not in names:
            continue
        k = inner.kernel.numpy()
        z = int(np.count_nonzero(k == 0))
        layers[inner.name] = z / k.size
        zeros += z
        total += k.size
    if not total:
        raise ValueError(f"model {model.name!r} has no Conv2D or Dense kernel")
    return {"overall": zeros / total, "min": min(layers.values()), "max": max(layers.values()),
            "kernels": len(layers), "weights": total, "layers": layers}


def prunable_layers_set(model) -> set:
    keras = _keras()
    names = set()
    for l in model.layers:
        inner = getattr(l, "layer", l)
        if type(inner) in (keras.layers.Conv2D, keras.layers.Dense):
            names.add(inner.name)
    return names


class _Progress:
    """Keras callback: a progress bar over the training steps, and a log line every ``every`` steps."""

    def __new__(cls, total: int, desc: str, every: int = 25):
        keras = _keras()

        class Cb(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = common.progress(range(total), desc, total=total)
                self.it = iter(self.bar)
                self.t0 = time.time()
                self.losses = []

            def on_train_batch_end(self, batch, logs=None):
                next(self.it, None)
                self.losses.append(float((logs or {}).get("loss", np.nan)))
                if (batch + 1) % every == 0 or batch + 1 == total:
                    log.info("%s step %d/%d loss %.4f (%.1f s/step)", desc, batch + 1, total,
                             float(np.mean(self.losses[-every:])), (time.time() - self.t0) / (batch + 1))

            def on_train_end(self, logs=None):
                close = getattr(self.bar, "close", None)
                if close:
                    close()

        return Cb()


def cosine_distance(y_true, y_pred):
    """``1 - cos(teacher, student)`` per sample (targets are already L2-normalized)."""
    import tensorflow as tf

    y_pred = tf.math.l2_normalize(y_pred, axis=-1)
    y_true = tf.math.l2_normalize(y_true, axis=-1)
    return 1.0 - tf.reduce_sum(y_true * y_pred, axis=-1)


def _dataset(crops: np.ndarray, targets: np.ndarray, batch_size: int, seed: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((crops, targets))
    ds = ds.shuffle(len(crops), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda x, y: ((tf.cast(x, tf.float32) - embedder.MEAN) / embedder.STD, y))
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def distill(model, crops: np.ndarray, targets: np.ndarray, steps: int, options: PruneOptions,
            callbacks: Sequence = (), desc: str = "distilling", learning_rate: Optional[float] = None) -> list[float]:
    """Train ``model`` for ``steps`` steps to reproduce ``targets`` (teacher embeddings); returns losses."""
    keras = _keras()
    if len(crops) != len(targets):
        raise ValueError(f"{len(crops)} crops but {len(targets)} teacher embeddings")
    if len(crops) < options.batch_size:
        raise ValueError(f"{len(crops)} crops are fewer than batch_size={options.batch_size}")
    lr = keras.optimizers.schedules.CosineDecay(float(learning_rate or options.learning_rate), steps)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=cosine_distance)
    progress = _Progress(steps, desc)
    model.fit(_dataset(crops, targets, options.batch_size, options.seed), epochs=1, steps_per_epoch=steps,
              callbacks=[*callbacks, progress], verbose=0)
    return progress.losses


def distill_pruned(pruned, crops: np.ndarray, targets: np.ndarray, options: PruneOptions) -> list[float]:
    """Recovery: distillation while tfmot's ``UpdatePruningStep`` applies the sparsity schedule."""
    return distill(pruned, crops, targets, options.steps, options,
                   callbacks=[_tfmot().sparsity.keras.UpdatePruningStep()],
                   desc=f"pruning to {options.target_sparsity:.0%}")


# --------------------------------------------------------------------------- prune-preserving QAT


def apply_pqat(stripped, calibration: Optional[np.ndarray] = None, batch_size: int = 16):
    """Prune-preserving quantization-aware copy of a stripped (sparse) model (tfmot PQAT scheme).

    Conv+BN+ReLU are folded as the TFLite converter does; the residual ``ScaleSum`` layers get their output
    quantized. The sparsity masks of the kernels are kept fixed during training. With ``calibration``
    (uint8 crops) the quantization ranges are seeded by :func:`seed_quantization_ranges` first; without it
    every activation range starts at tfmot's [-6, 6] (FaceNet's activations are far larger: the QAT model is
    then useless until thousands of EMA steps have moved the ranges).
    """
    keras = _keras()
    tfmot = _tfmot()
    quant = tfmot.quantization.keras
    from .facenet_keras import ScaleSum

    class OutputOnly(quant.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quant.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                            narrow_range=False)]

        def get_config(self):
            return {}

    ordered_concat = _ordered_concatenate_class()

    def annotate(layer):
        if isinstance(layer, ScaleSum):
            return quant.quantize_annotate_layer(layer, quantize_config=OutputOnly())
        if type(layer) is keras.layers.Concatenate:
            # tfmot's ConcatTransform reorders a Concatenate's inputs (tensorflow/model-optimization#1061:
            # FaceNet's Mixed_6a/Mixed_7a came out as [maxpool, conv branches...], channels permuted); a
            # subclass is not matched by that transform, and its output is quantized like ScaleSum's
            return quant.quantize_annotate_layer(ordered_concat.from_config(layer.get_config()),
                                                 quantize_config=OutputOnly())
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return quant.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(stripped, clone_function=annotate)
    annotated.set_weights(stripped.get_weights())
    with quant.quantize_scope({"OutputOnly": OutputOnly, "ScaleSum": ScaleSum,
                               "OrderedConcatenate": ordered_concat}):
        qat = quant.quantize_apply(annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    check_same_wiring(stripped, qat)
    if calibration is not None:
        seed_quantization_ranges(qat, calibration, batch_size=batch_size)
    return qat


_ORDERED_CONCAT = []


def _ordered_concatenate_class():
    """``keras.layers.Concatenate`` under another class name (so tfmot's Concat transforms leave it alone)."""
    if not _ORDERED_CONCAT:
        keras = _keras()

        class OrderedConcatenate(keras.layers.Concatenate):
            pass

        _ORDERED_CONCAT.append(OrderedConcatenate)
    return _ORDERED_CONCAT[0]


def _wiring(model) -> dict:
    """``{layer name: [inbound layer names]}`` of ``model`` itself (from its config: a layer shared with
    another model has that model's nodes too)."""
    out = {}
    for entry in model.get_config()["layers"]:
        names = []
        for node in entry.get("inbound_nodes", []):
            names += [item[0] for item in (node if isinstance(node, list) else node.get("args", []))
                      if isinstance(item, (list, tuple))]
        out[entry["config"]["name"]] = names
    return out


def check_same_wiring(model, qat, prefix: str = "quant_") -> None:
    """Raise ``ValueError`` unless every layer of ``qat`` takes its inputs in ``model``'s order.

    tfmot's layout transforms rebuild the graph; a reordered multi-input layer (a Concatenate) permutes
    channels, and nothing downstream can learn that back.
    """
    original, rewired = _wiring(model), _wiring(qat)
    for name, want in original.items():
        got = rewired.get(prefix + name)
        if got is None or len(want) < 2:
            continue
        got = [n[len(prefix):] if n.startswith(prefix) else n for n in got]
        if got != want:
            raise ValueError(f"quantization-aware model rewired {name!r}: inputs {got}, expected {want}")


def _range_quantizer_classes():
    q = _tfmot().quantization.keras.quantizers
    return q.MovingAverageQuantizer, q.AllValuesQuantizer


def _observed_range(x, per_axis: bool, symmetric: bool, num_bits: int, narrow_range: bool):
    """min/max of ``x`` as tfmot's range quantizers would set them (0 always inside, symmetric if asked)."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - 1)) if per_axis and x.ndim >= 2 else None
    lo, hi = x.min(axis=axes), x.max(axis=axes)
    if symmetric:
        ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return np.minimum(lo, hi / ratio), np.maximum(hi, lo * ratio)
    return np.minimum(lo, 0.0), np.maximum(hi, 0.0)


def seed_quantization_ranges(qat, crops: np.ndarray, batch_size: int = 16,
                             input_range: Optional[tuple] = None) -> dict:
    """Initialise every quantizer range of a tfmot QAT model from a float calibration pass.

    tfmot creates each activation range as [-6, 6] and moves it by an EMA (decay 0.999) during training, so
    activations beyond +-6 (most of FaceNet's) stay clipped for thousands of steps. This runs ``crops``
    (uint8, normalized as the embedder does) through ``qat`` with every activation quantizer
    (``MovingAverageQuantizer``, ``AllValuesQuantizer``) replaced by an identity that records the min/max of
    what it sees, i.e. the float model's activation ranges, which is what post-training int8 calibrates on;
    those min/max are assigned to the quantizers' ``*_min``/``*_max`` variables. The input quantizer gets
    ``input_range`` (default: the normalized uint8 pixel range, exactly what the int8 model's uint8 input
    covers). Weight quantizers (``LastValueQuantizer``: per-channel symmetric for Conv2D) are set from the
    current kernels. The model's weights and BatchNorm statistics are not touched.

    Returns ``{"activations": n, "weights": n, "inputs": n, "input_range": [lo, hi], "largest": max |range|}``.
    """
    import tensorflow as tf

    if not len(crops):
        raise ValueError("seeding quantization ranges needs calibration crops; got none")
    if not tf.executing_eagerly():
        raise RuntimeError("seed_quantization_ranges must run eagerly")
    classes = _range_quantizer_classes()
    seen: dict = {}

    def record(self, inputs, training, weights, **kwargs):
        lo, hi = _observed_range(inputs.numpy(), self.per_axis, self.symmetric, self.num_bits, self.narrow_range)
        key = weights["min_var"].ref()
        if key in seen:
            lo, hi = np.minimum(seen[key][0], lo), np.maximum(seen[key][1], hi)
        seen[key] = (lo, hi, weights["min_var"], weights["max_var"])
        return inputs

    saved = {cls: cls.__dict__["__call__"] for cls in classes}
    try:
        for cls in classes:
            cls.__call__ = record
        for s in range(0, len(crops), batch_size):
            qat(_normalize(crops[s:s + batch_size]), training=False)
    finally:
        for cls, call in saved.items():
            cls.__call__ = call
    if not seen:
        raise ValueError(f"model {qat.name!r} has no activation quantizer to seed")
    for lo, hi, min_var, max_var in seen.values():
        min_var.assign(np.broadcast_to(lo, min_var.shape).astype(np.float32))
        max_var.assign(np.broadcast_to(hi, max_var.shape).astype(np.float32))

    if input_range is None:
        input_range = ((0.0 - embedder.MEAN) / embedder.STD, (255.0 - embedder.MEAN) / embedder.STD)
    inputs_seeded = 0
    weights_seeded = 0
    for layer in qat.layers:
        if type(layer).__name__ == "QuantizeLayer":  # the model input's quantizer
            qv = getattr(layer, "quantizer_vars", None)
            if qv:
                qv["min_var"].assign(float(input_range[0]))
                qv["max_var"].assign(float(input_range[1]))
                inputs_seeded += 1
        for weight, quantizer, qvars in getattr(layer, "_weight_vars", []):
            quantizer(weight, True, weights=qvars)  # LastValueQuantize: assigns the kernel's (masked) range
            weights_seeded += 1
    largest = max(float(np.max(np.abs(np.concatenate([np.ravel(lo), np.ravel(hi)]))))
                  for lo, hi, _, _ in seen.values())
    log.info("seeded %d activation ranges (largest |range| %.1f), %d weight ranges, %d input quantizer(s) "
             "from %d crops", len(seen), largest, weights_seeded, inputs_seeded, len(crops))
    return {"activations": len(seen), "weights": weights_seeded, "inputs": inputs_seeded,
            "input_range": [float(input_range[0]), float(input_range[1])], "largest": round(largest, 3)}


def qat_kernels(qat) -> dict:
    """``{layer name: float kernel}`` of the Conv2D/Dense layers inside a QAT model's wrappers."""
    keras = _keras()
    out = {}
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and type(inner) in (keras.layers.Conv2D, keras.layers.Dense):
            # the wrapper replaces inner.kernel by its fake-quantized tensor; the variable is in _weight_vars
            for weight, _, _ in layer._weight_vars:
                if weight.name.split("/")[-1].startswith("kernel"):
                    out[inner.name] = weight.numpy()
    return out


# --------------------------------------------------------------------------- int8 export


def quantize_int8(model, calibration_crops: Sequence[np.ndarray], input_dtype: str = "uint8",
                  desc: str = "calibrating pruned model") -> bytes:
    """Full-integer TFLite with the settings of every int8 model (:mod:`quantize`: uint8 input, float32 output)."""
    import tensorflow as tf

    if input_dtype not in ("uint8", "int8"):
        raise ValueError(f"input_dtype must be 'int8' or 'uint8', got {input_dtype!r}")
    if not len(calibration_crops):
        raise ValueError("int8 needs calibration crops; got none")
    samples = [preprocess.normalize(c, embedder.MEAN, embedder.STD)[None] for c in calibration_crops]

    def representative():
        for x in common.progress(samples, desc):
            yield [x]

    # static batch 1, like embedder.py: a dynamic batch is rejected by the Edge TPU compiler
    converter = tf.lite.TFLiteConverter.from_keras_model(embedder.fixed_batch(model))
    quantize.configure_full_int8(converter, representative, input_type=input_dtype)
    return converter.convert()


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


def _write_model(tflite: bytes, dst: Path, manifest: dict) -> Path:
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
    data["converter_version"] = common.CONVERTER_VERSION
    return data


def embed_tflite(path: str | os.PathLike, crops: np.ndarray, desc: str = "embedding (tflite)") -> np.ndarray:
    """L2-normalized embeddings of uint8 crops by an edgeface embedder model (through its manifest)."""
    from edgeface.embed import FaceEmbedder

    emb = FaceEmbedder(path)
    return np.stack([emb.embed_crop(c) for c in common.progress(list(crops), desc)])


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(_l2(a) * _l2(b), axis=-1)
    return {"mean": round(float(cos.mean()), 4), "p01": round(float(np.percentile(cos, 1)), 4),
            "min": round(float(cos.min()), 4), "n": int(len(cos))}


# --------------------------------------------------------------------------- end to end


def calibration_crops(detector_path: str | os.PathLike, recipe: dict, count: int = 300,
                      seed: int = 20260101) -> list[np.ndarray]:
    """The crops ``edgeface build`` calibrates the embedder on (same set, same code as :mod:`build`)."""
    from edgeface.calibration_data import builder
    from edgeface.detect import FaceDetector
    from edgeface.embed import face_crop

    cset = builder.default_set(count, seed)
    images = builder.load_images(cset, lambda it: common.progress(it, "reading calibration images",
                                                                   len(cset.files)))
    return builder.face_crops(images, FaceDetector(detector_path).detect,
                              lambda img, face: face_crop(img, face.box, face.keypoints, recipe))


def prune_embedder(models_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   options: PruneOptions = PruneOptions(), lfw_root: Optional[str | os.PathLike] = None,
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
        raise ValueError(f"options must be a PruneOptions, got {type(options).__name__}")
    if pruned_model is not None and not Path(pruned_model).is_file():
        raise ValueError(f"{pruned_model}: no such pruned model")
    det_float, emb_float = resolve_models(models_dir, "float32")
    _, emb_int8 = resolve_models(models_dir, "int8")
    base = read_manifest(emb_int8)
    family = base["family"]
    recipe = base["embedder"]["crop"]
    cache = Path(cache_dir or Path(__file__).resolve().parents[1] / ".cache" / "prune")
    lfw = Path(lfw_root) if lfw_root else builder.default_data_root() / "lfw"

    files = devtrain_files(lfw, options.num_crops, options.seed)
    crops = make_face_crops(files, det_float, recipe, cache)
    if len(crops) <= options.holdout + options.batch_size:
        raise ValueError(f"only {len(crops)} face crops for holdout={options.holdout} and "
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
        raise ValueError(f"{pruned_model}: kernel sparsity {sparsity['overall']:.3f}, not the target "
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
    written["int8"] = _write_model(quantize_int8(export, calibration), dst,
                                   dict(pruned_manifest(base, pruning, "int8", base["input"]["dtype"]),
                                        calibration=dict(base.get("calibration", {}), num_crops=len(calibration))))
    if save_float:
        import tensorflow as tf

        flt = tf.lite.TFLiteConverter.from_keras_model(embedder.fixed_batch(stripped)).convert()
        written["float32"] = _write_model(flt, out_dir / f"{stem}_float32_{tag}.tflite",
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
        from .build import calibrate_min_cosine_similarity

        for precision, path in written.items():
            calibrate_min_cosine_similarity(models_dir / Path(resolve_models(models_dir, precision)[0]).name,
                                            path, lfw)
    report["seconds"] = round(time.time() - t0, 1)
    tmp = out_dir / f"pruning-{tag}.json.part"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_dir / f"pruning-{tag}.json")
    return report
