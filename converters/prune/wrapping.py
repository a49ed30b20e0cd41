"""tfmot's magnitude pruning around a copy of the teacher: schedule, wrapping, stripping, sparsity."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .options import PruneError, PruneOptions


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _keras():
    import tf_keras

    return tf_keras


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
    from ..facenet_keras import ScaleSum

    path = Path(path)
    if not path.is_file():
        raise PruneError(f"{path}: no such pruned model")
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
