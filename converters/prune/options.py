"""Validated settings of a pruning run and the errors a run reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from edgeface.errors import EdgefaceError


class PruneError(EdgefaceError, ValueError):
    """A pruning run that cannot start or finish (bad option, missing LFW lists, wrong pruned model)."""


SCHEDULES = ("polynomial", "constant")


SPARSITY_PRESETS = (0.3, 0.5, 0.75)


KERAS_FAMILIES = ("facenet-casia", "facenet-msceleb")


@dataclass(frozen=True)
class PruneOptions:
    """Validated settings of one pruning run (every bad value raises :class:`PruneError`, a ``ValueError``,
    naming the field).

    ``target_sparsity``: fraction of zero weights in every Conv2D/Dense kernel (presets 0.3 / 0.5 / 0.75).
    ``schedule``: ``polynomial`` ramps from 0 to the target over ``ramp_fraction`` of the steps (updates every
    ``frequency`` steps); ``constant`` prunes to the target at step 0 and then only recovers.
    ``steps``, ``batch_size``, ``learning_rate`` (Adam, cosine decay to 0): the distillation.
    ``num_crops``: LFW DevTrain face crops (``holdout`` of them are never trained on: the cosine check).
    ``pqat_steps``: prune-preserving QAT steps after pruning (0: post-training int8 only); the quantizer
    ranges are seeded from the calibration crops first (see :func:`apply_pqat`: unseeded ranges plus tfmot's
    concat reordering gave cosine 0.23 after 60 steps). ``pqat_learning_rate``: default ``learning_rate / 10``.
    Post-training int8 already keeps the zeros exactly.
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
            raise PruneError(f"PruneOptions.{name}={getattr(self, name)!r}: {why}")

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
