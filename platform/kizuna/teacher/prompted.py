"""The ``prompted`` teacher: the base model itself, told who to be in its prompt.

This is context distillation: the student adapter learns to behave as the prompted
base model does, without the prompt. Teacher and student share the tokenizer, so the
teacher also gives its logits over the reply for the re-distillation job's KL term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kizuna.config import Settings
from kizuna.model.engine import Engine, EngineRequest, build_engine
from kizuna.model.generation import SamplingParams
from kizuna.model.prompts import prompt_ids, reply_ids
from kizuna.teacher.base import StyleRequest
from kizuna.teacher.persona_prompt import persona_messages

BATCH_SIZE = 8


class PromptedTeacher:
    """A causal LM prompted with the persona (greedy, so targets are reproducible)."""

    def __init__(self, engine: Engine, *, name: str, model_label: str, max_new_tokens: int) -> None:
        self.name = name
        self._engine = engine
        self._model_label = model_label
        self._params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    @property
    def version(self) -> str:
        """The prompt format's version and the model that answers it."""
        return f"{self.name}-1:{self._model_label}"

    def _prompt(self, request: StyleRequest) -> list[int]:
        return prompt_ids(self._engine.tokenizer, persona_messages(request))

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """Greedy replies, generated in batches of the base model (no adapter)."""
        targets: list[str] = []
        for start in range(0, len(requests), BATCH_SIZE):
            chunk = requests[start : start + BATCH_SIZE]
            rows = [EngineRequest(prompt=self._prompt(r), params=self._params) for r in chunk]
            targets.extend(generation.text for generation in self._engine.generate(rows))
        return targets

    def target_logits(self, request: StyleRequest, target: str) -> torch.Tensor:
        """Teacher-forced logits over ``target``'s reply tokens (see ``LogitTeacher``)."""
        prompt = self._prompt(request)
        reply = reply_ids(self._engine.tokenizer, target)
        (logits,) = self._engine.forward_logits([EngineRequest(prompt=prompt + reply)])
        # Position i of the sequence predicts token i + 1: the reply's predictions start
        # at the last prompt position.
        return logits[len(prompt) - 1 : len(prompt) - 1 + len(reply)]


def build(settings: Settings) -> PromptedTeacher:
    """The configured base model as its own teacher."""
    return PromptedTeacher(
        build_engine(settings, max_adapters=1),
        name="prompted",
        model_label=settings.base_model,
        max_new_tokens=settings.teacher_max_new_tokens,
    )
