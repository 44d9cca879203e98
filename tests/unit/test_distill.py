"""The re-distillation loss."""

import pytest
import torch
import torch.nn.functional as F

from kizuna.model.distill import DistillationWeights, distillation_loss


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(6, 11, generator=torch.Generator().manual_seed(seed)) * 3


LABELS = torch.tensor([0, 3, 5, 7, 9, 10])


def test_without_teacher_logits_it_is_cross_entropy() -> None:
    student = _logits(0)
    loss = distillation_loss(student, LABELS, None, DistillationWeights(alpha=0.3))
    torch.testing.assert_close(loss, F.cross_entropy(student, LABELS))


def test_it_matches_the_definition() -> None:
    student, teacher = _logits(0), _logits(1)
    alpha, t = 0.25, 3.0
    p_teacher = torch.softmax(teacher / t, dim=-1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=-1))).sum(-1).mean()
    expected = alpha * F.cross_entropy(student, LABELS) + (1 - alpha) * t * t * kl
    loss = distillation_loss(student, LABELS, teacher, DistillationWeights(alpha, t))
    torch.testing.assert_close(loss, expected)


def test_a_student_equal_to_its_teacher_pays_only_cross_entropy() -> None:
    student = _logits(2)
    loss = distillation_loss(student, LABELS, student.clone(), DistillationWeights(alpha=0.5))
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(student, LABELS))


def test_the_kl_term_pulls_the_student_towards_the_teacher() -> None:
    student = _logits(3).requires_grad_()
    teacher = _logits(4)
    weights = DistillationWeights(alpha=0.0, temperature=2.0)
    before = distillation_loss(student, LABELS, teacher, weights)
    before.backward()
    assert student.grad is not None
    stepped = (student - 0.5 * student.grad).detach()
    assert distillation_loss(stepped, LABELS, teacher, weights) < before


def test_misaligned_teacher_logits_and_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="do not line up"):
        distillation_loss(_logits(0), LABELS, _logits(1)[:5], DistillationWeights())
    with pytest.raises(ValueError, match="alpha"):
        DistillationWeights(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationWeights(temperature=0)
