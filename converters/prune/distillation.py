"""Recovery by distillation: ``1 - cos(student, teacher)`` on the crops, with a progress bar."""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np

from .. import common, embedder
from .options import PruneOptions
from .wrapping import _keras, _tfmot

log = logging.getLogger(__name__)


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


def _dataset(crops: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, mean: float = embedder.MEAN):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((crops, targets))
    ds = ds.shuffle(len(crops), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda x, y: ((tf.cast(x, tf.float32) - mean) / embedder.STD, y))
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def distill(model, crops: np.ndarray, targets: np.ndarray, steps: int, options: PruneOptions,
            callbacks: Sequence = (), desc: str = "distilling", learning_rate: Optional[float] = None,
            mean: float = embedder.MEAN) -> list[float]:
    """Train ``model`` for ``steps`` steps to reproduce ``targets`` (teacher embeddings); returns losses.
    The uint8 ``crops`` are normalized with ``mean``, as the teacher's were (:func:`.teacher_embeddings`)."""
    keras = _keras()
    if len(crops) != len(targets):
        raise ValueError(f"{len(crops)} crops but {len(targets)} teacher embeddings")
    if len(crops) < options.batch_size:
        raise ValueError(f"{len(crops)} crops are fewer than batch_size={options.batch_size}")
    lr = keras.optimizers.schedules.CosineDecay(float(learning_rate or options.learning_rate), steps)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=cosine_distance)
    progress = _Progress(steps, desc)
    model.fit(_dataset(crops, targets, options.batch_size, options.seed, mean), epochs=1, steps_per_epoch=steps,
              callbacks=[*callbacks, progress], verbose=0)
    return progress.losses


def distill_pruned(pruned, crops: np.ndarray, targets: np.ndarray, options: PruneOptions) -> list[float]:
    """Recovery: distillation while tfmot's ``UpdatePruningStep`` applies the sparsity schedule."""
    return distill(pruned, crops, targets, options.steps, options,
                   callbacks=[_tfmot().sparsity.keras.UpdatePruningStep()],
                   desc=f"pruning to {options.target_sparsity:.0%}")
