"""Prune-preserving QAT and its fixes: concat order kept, quantizer ranges seeded from a float pass."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from .. import embedder
from .data import normalize_crops
from .wrapping import _keras, _tfmot

log = logging.getLogger(__name__)


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
    from ..facenet_keras import ScaleSum

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
                             input_range: Optional[tuple] = None, mean: float = embedder.MEAN) -> dict:
    """Initialise every quantizer range of a tfmot QAT model from a float calibration pass.

    tfmot creates each activation range as [-6, 6] and moves it by an EMA (decay 0.999) during training, so
    activations beyond +-6 (most of FaceNet's) stay clipped for thousands of steps. This runs ``crops``
    (uint8, normalized with ``mean`` as the model's manifest says) through ``qat`` with every activation quantizer
    (``MovingAverageQuantizer``, ``AllValuesQuantizer``) replaced by an identity that records the min/max of
    what it sees, i.e. the float model's activation ranges, which is what post-training int8 calibrates on;
    those min/max are assigned to the quantizers' ``*_min``/``*_max`` variables. The input quantizer gets
    ``input_range`` (default: the normalized uint8 pixel range, exactly what the int8 model's uint8 input
    covers: with ``mean`` 128, scale 1/128 and zero point 128, the pixels themselves). Weight quantizers
    (``LastValueQuantizer``: per-channel symmetric for Conv2D) are set from the current kernels. The model's
    weights and BatchNorm statistics are not touched.

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
            qat(normalize_crops(crops[s:s + batch_size], mean), training=False)
    finally:
        for cls, call in saved.items():
            cls.__call__ = call
    if not seen:
        raise ValueError(f"model {qat.name!r} has no activation quantizer to seed")
    for lo, hi, min_var, max_var in seen.values():
        min_var.assign(np.broadcast_to(lo, min_var.shape).astype(np.float32))
        max_var.assign(np.broadcast_to(hi, max_var.shape).astype(np.float32))

    if input_range is None:
        input_range = ((0.0 - mean) / embedder.STD, (255.0 - mean) / embedder.STD)
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
