"""The ``hf`` teacher: a larger local Hugging Face model, prompted with the persona.

It prompts exactly as the ``prompted`` teacher does, with another model. Its logits are
only comparable with the student's when both share a vocabulary (e.g. Qwen2.5-7B
teaching Qwen2.5-0.5B); otherwise it gives targets only.
"""

from __future__ import annotations

from collections.abc import Sequence

from kizuna.config import Settings
from kizuna.model.base import load_base_model, load_tokenizer, resolve_device
from kizuna.model.engine import Engine
from kizuna.teacher.base import StyleRequest, Teacher, TeacherUnavailableError
from kizuna.teacher.prompted import PromptedTeacher


class TextOnlyTeacher:
    """A model teacher whose vocabulary differs from the student's: targets, no logits."""

    def __init__(self, inner: PromptedTeacher) -> None:
        self.name = inner.name
        self._inner = inner

    @property
    def version(self) -> str:
        """The wrapped teacher's version."""
        return self._inner.version

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """The wrapped teacher's targets."""
        return self._inner.relabel(requests)


def build(settings: Settings) -> Teacher:
    """The model named by ``teacher_hf_model``, on the configured device."""
    if not settings.teacher_hf_model:
        raise TeacherUnavailableError(
            "the hf teacher needs a model: set KIZUNA_TEACHER_HF_MODEL to a Hugging Face id "
            "or a local checkpoint directory"
        )
    path = settings.teacher_hf_model
    tokenizer = load_tokenizer(path)
    model = load_base_model(path, device=resolve_device(settings.device))
    teacher = PromptedTeacher(
        Engine(model, tokenizer, max_adapters=1),
        name="hf",
        model_label=path,
        max_new_tokens=settings.teacher_max_new_tokens,
    )
    student_vocabulary = load_tokenizer(settings.resolved_base_model).get_vocab()
    if tokenizer.get_vocab() == student_vocabulary:
        return teacher
    return TextOnlyTeacher(teacher)
