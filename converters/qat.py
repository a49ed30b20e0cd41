"""Quantization-aware training of an embedder, distilled from its own float model, then full int8.

Post-training int8 of MobileFaceNet loses about a point of LFW accuracy: 50 layers of per-tensor int8
activations add up, and the 7x7 global depthwise convolution sums 49 of those errors per channel. QAT recovers
it (:func:`train_qat`):

1. the **student**: a copy of the float Keras model wrapped by tfmot's default 8-bit scheme
   (``quantize_model``: the fake-quant the TFLite converter will apply, per-channel weights);
2. every quantizer range seeded from a float calibration pass (:func:`.prune.seed_quantization_ranges`:
   tfmot's own [-6, 6] start clips activations); the crops are normalized with the model's own input mean
   throughout (``mean``: 128 for the exact-input MobileFaceNet, whose input quantizer is then scale 1/128,
   zero point 128: the pixels themselves);
3. distillation (:func:`.prune.distill`, loss ``1 - cos(student, teacher)``) on landmark-aligned LFW
   ``peopleDevTrain`` crops (``pairsDevTest`` people are never trained on);
4. the TFLite converter turns the QAT model into the same full-int8 graph as post-training quantization
   (:func:`.prune.quantize_int8`: uint8 input, int8 output, static batch 1).

The helpers come from :mod:`.prune` (data, teacher embeddings, the distillation loop, range seeding): one
distillation loop in the code base.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import NamedTuple, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from . import embedder, prune  # noqa: E402
from .prune.wrapping import _keras, _tfmot  # noqa: E402

log = logging.getLogger(__name__)


class QatOptions(NamedTuple):
    """``steps`` of distillation with Adam (cosine decay from ``learning_rate``), ``batch_size`` crops per step,
    on ``num_crops`` LFW DevTrain face crops chosen with ``seed``. 0 steps: no QAT (post-training int8).

    ``learning_rate``: the student starts from the channel-equalized float weights, already close; 200 steps
    from 3e-5 gave LFW int8 99.28 % (= float), from 1e-4 98.95 % (below post-training's 99.07 %).
    """
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-5
    num_crops: int = 2000
    seed: int = 0

    def validated(self) -> "QatOptions":
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.num_crops < self.batch_size:
            raise ValueError(f"num_crops ({self.num_crops}) must be >= batch_size ({self.batch_size})")
        return self


class QatResult(NamedTuple):
    model: object  # the tfmot QAT Keras model
    losses: list
    seconds: float
    num_crops: int


def training_crops(lfw_root, detector_path, recipe: dict, options: QatOptions, cache_dir=None) -> np.ndarray:
    """uint8 aligned crops of LFW DevTrain people (cached in ``cache_dir``), as pruning uses."""
    files = prune.devtrain_files(lfw_root, options.num_crops, options.seed)
    return prune.make_face_crops(files, detector_path, recipe, cache_dir)


_DW_CLASSES = []


def _depthwise_config_class():
    """A QuantizeConfig for ``DepthwiseConv2D`` with *per-channel* kernel fake-quant, as TFLite quantizes it.

    tfmot's default scheme quantizes a depthwise kernel "per axis" along its last axis, which is the depth
    multiplier (1): one scale for all channels. MobileFaceNet's 1x1 slope convolutions (slopes from -0.1 to
    2.4) and its 7x7 global depthwise convolution then train against far coarser weights than the int8 model
    has. This config fake-quantizes the kernel per channel (transposed so the channels are the last axis, as
    tfmot does for Conv2DTranspose) and the activation per tensor.
    """
    if _DW_CLASSES:
        return _DW_CLASSES[0]
    import tensorflow as tf

    keras = _keras()
    quant = _tfmot().quantization.keras

    class DepthwiseChannelQuantizer(quant.quantizers.LastValueQuantizer):
        def __init__(self):
            super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

        def build(self, tensor_shape, name, layer):
            channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
            init = keras.initializers.Constant
            return {"min_var": layer.add_weight(name + "_min", shape=(channels,), initializer=init(-6.0),
                                                trainable=False),
                    "max_var": layer.add_weight(name + "_max", shape=(channels,), initializer=init(6.0),
                                                trainable=False)}

        def __call__(self, inputs, training, weights, **kwargs):
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, [shape[0], shape[1], 1, -1])  # (kh, kw, C * mult): channels last
            out = super().__call__(flat, training, weights, **kwargs)
            return tf.reshape(out, shape)

        def get_config(self):
            return {}

    class DepthwiseQuantizeConfig(quant.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.depthwise_kernel, DepthwiseChannelQuantizer())]

        def get_activations_and_quantizers(self, layer):
            return [(layer.activation, quant.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False))]

        def set_quantize_weights(self, layer, quantize_weights):
            layer.depthwise_kernel = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            layer.activation = quantize_activations[0]

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    _DW_CLASSES.extend([DepthwiseQuantizeConfig, DepthwiseChannelQuantizer])
    return DepthwiseQuantizeConfig


def quantize_model(float_model):
    """tfmot's default 8-bit QAT wrapper around a *fresh copy* of ``float_model`` (the teacher is untouched),
    with per-channel depthwise kernels (:func:`_depthwise_config_class`)."""
    keras = _keras()
    quant = _tfmot().quantization.keras
    config = _depthwise_config_class()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if type(layer) is keras.layers.DepthwiseConv2D:
            return quant.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()),
                                                 quantize_config=config())
        return quant.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()))

    annotated = keras.models.clone_model(float_model, clone_function=annotate)
    annotated.set_weights(float_model.get_weights())
    with quant.quantize_scope({"DepthwiseQuantizeConfig": config,
                               "DepthwiseChannelQuantizer": _DW_CLASSES[1]}):
        return quant.quantize_apply(annotated)


def train_qat(teacher, crops: np.ndarray, calibration: np.ndarray, options: Optional[QatOptions] = None,
              teacher_cache: Optional[Path] = None, mean: float = embedder.MEAN) -> QatResult:
    """QAT copy of ``teacher`` distilled on ``crops`` (uint8); ``calibration`` crops seed the ranges.

    ``mean``: the teacher's input normalization ``(x - mean) / STD``, used for its targets, the range seeding
    (the input quantizer gets the uint8 pixel range) and the distillation; the int8 conversion
    (:func:`to_int8`) must use the same. MobileFaceNet: :data:`embedder.EXACT_INPUT_MEAN` with a teacher from
    ``embedder.keras_model(..., exact_input=True)``, so the uint8 input maps pixels exactly.
    """
    options = QatOptions() if options is None else options
    options = options.validated()
    t0 = time.time()
    targets = prune.teacher_embeddings(teacher, crops, teacher_cache, mean=mean)
    qat = quantize_model(teacher)
    prune.seed_quantization_ranges(qat, np.asarray(calibration), batch_size=options.batch_size, mean=mean)
    losses: list = []
    if options.steps:
        run = prune.PruneOptions(steps=options.steps, batch_size=options.batch_size,
                                 learning_rate=options.learning_rate, seed=options.seed)
        losses = prune.distill(qat, crops, targets, options.steps, run, desc="quantization-aware training",
                               mean=mean)
    log.info("QAT: %d steps on %d crops in %.0f s (last loss %.4f)", options.steps, len(crops),
             time.time() - t0, float(np.mean(losses[-20:])) if losses else float("nan"))
    return QatResult(qat, losses, round(time.time() - t0, 1), len(crops))


def to_int8(qat_model, calibration: np.ndarray, input_dtype: str = "uint8", mean: float = embedder.MEAN) -> bytes:
    """Full-int8 TFLite of a QAT model (uint8 input, int8 output, batch 1); ``mean`` as in :func:`train_qat`."""
    return prune.quantize_int8(qat_model, list(calibration), input_dtype=input_dtype, desc="converting QAT model",
                               mean=mean)
