"""The re-distillation loss: cross-entropy on teacher targets plus temperature KL.

``loss = α · CE(student, target tokens) + (1 − α) · T² · KL(teacher_T ‖ student_T)``

where ``_T`` is the softmax at temperature T. The T² factor keeps the KL term's
gradients on the same scale as CE's when T changes (Hinton et al., 2015). When the
teacher gives no logits (``rules``, ``openai``, a text-only ``hf``) the loss is CE alone:
sequence-level distillation on the teacher's text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillationWeights:
    """α (weight of CE) and the softmax temperature of the KL term."""

    alpha: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    weights: DistillationWeights,
) -> torch.Tensor:
    """The loss over N labelled positions: logits ``(N, V)``, labels ``(N,)``."""
    cross_entropy = F.cross_entropy(student_logits.float(), labels)
    if teacher_logits is None:
        return cross_entropy
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not line up with the "
            f"student's {tuple(student_logits.shape)}"
        )
    t = weights.temperature
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return weights.alpha * cross_entropy + (1.0 - weights.alpha) * t * t * kl
