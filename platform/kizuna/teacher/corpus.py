"""The ``corpus`` teacher: the embedded teacher, best-of-N kept only where checks pass.

Its knowledge is the authored persona corpus. An input the corpus rewrote (train split
only: a held-out input is never taught) gets its authored rewrite. Any other input gets
N candidates from the embedded models — the persona's stable adapter at full strength
(greedy, then sampled), and the base model prompted with the persona's profile and the
authored examples most similar to the input (few-shot) — and each candidate is scored
by the persona judge and the content check, the same two the evaluation scores the
student with. The target is the most persona-like candidate that keeps the input's
facts and meaning; with none, the most persona-like one, which the relabel's quality
filter then drops under its reason. This is rejection-sampling distillation: the
student learns only from rewrites that already pass what it will be judged by.

A large model is the better teacher: point the ``openai`` teacher at one (see the
README); this one needs nothing beyond the embedded install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.persona_corpus import AuthoredRewrite, authored_rewrites
from kizuna.evaluation.classifier import PersonaClassifier, load_or_train
from kizuna.model.engine import Engine, EngineRequest, build_engine
from kizuna.model.generation import SamplingParams
from kizuna.model.prompts import prompt_ids, transform_messages
from kizuna.personas import load_profiles
from kizuna.personas.schema import Example
from kizuna.sampler.diversity import cosine, ngram_vector
from kizuna.serve.adapters import make_resident
from kizuna.store import adapters as adapter_store
from kizuna.store.db import open_store
from kizuna.store.models import AdapterStatus
from kizuna.teacher.base import StyleRequest
from kizuna.teacher.persona_prompt import persona_messages

#: Requests whose candidates share one engine batch (3 x 5 = 15 rows).
REQUESTS_PER_BATCH = 3


@dataclass(frozen=True)
class Sampling:
    """How many candidates of each kind, and how they are decoded."""

    adapter_samples: int = 3
    temperature: float = 0.8
    few_shot: int = 4
    max_new_tokens: int = 80


class CorpusTeacher:
    """Authored rewrites where the corpus has them, else the best checked candidate."""

    name = "corpus"

    def __init__(
        self,
        engine: Engine,
        judge: PersonaClassifier,
        content: ContentCheck,
        *,
        adapters: Mapping[str, str],
        sampling: Sampling | None = None,
    ) -> None:
        self._engine = engine
        self._judge = judge
        self._content = content
        self._adapters = dict(adapters)  # persona -> resident adapter name
        self._sampling = sampling or Sampling()
        self._authored = {(r.persona, r.input): r for r in authored_rewrites(split="train")}
        # The few-shot pool of each persona and language, with its inputs' n-gram vectors
        # computed once rather than for every request.
        self._pool: dict[tuple[str, str], list[tuple[dict[int, float], AuthoredRewrite]]] = {}
        for rewrite in self._authored.values():
            self._pool.setdefault((rewrite.persona, rewrite.language), []).append(
                (ngram_vector(rewrite.input), rewrite)
            )

    @property
    def version(self) -> str:
        """The candidate recipe and the adapters it sampled from."""
        adapters = ",".join(f"{p}={a}" for p, a in sorted(self._adapters.items()))
        return f"corpus-1:samples={self._sampling.adapter_samples}:{adapters}"

    def relabel(self, requests: Sequence[StyleRequest]) -> list[str]:
        """One target per request (see the module docstring).

        The candidates of several requests share one batch of the engine.
        """
        targets: dict[int, str] = {}
        pending = []
        for index, request in enumerate(requests):
            authored = self._authored.get((request.persona.id, request.text))
            if authored is not None:
                targets[index] = authored.target
            else:
                pending.append(index)
        for start in range(0, len(pending), REQUESTS_PER_BATCH):
            chunk = pending[start : start + REQUESTS_PER_BATCH]
            rows = [self._candidate_rows(requests[index]) for index in chunk]
            texts = iter(g.text for g in self._engine.generate([r for rs in rows for r in rs]))
            for index, own in zip(chunk, rows, strict=True):
                targets[index] = self.best(requests[index], [next(texts) for _ in own])
        return [targets[index] for index in range(len(requests))]

    def best(self, request: StyleRequest, candidates: list[str]) -> str:
        """The most persona-like candidate that keeps the content (else the most
        persona-like)."""
        scores = self._judge.persona_score(candidates, request.persona.id)
        verdicts = self._content.verdicts([(request.text, c) for c in candidates])
        ranked = sorted(
            range(len(candidates)), key=lambda i: (verdicts[i].kept, scores[i]), reverse=True
        )
        return candidates[ranked[0]]

    def _candidate_rows(self, request: StyleRequest) -> list[EngineRequest]:
        sampling = self._sampling
        greedy = SamplingParams(max_new_tokens=sampling.max_new_tokens)
        rows = [
            EngineRequest(
                prompt=prompt_ids(
                    self._engine.tokenizer,
                    persona_messages(request, examples=self._nearest(request)),
                ),
                params=greedy,
            )
        ]
        adapter = self._adapters.get(request.persona.id)
        if adapter is not None:
            prompt = prompt_ids(self._engine.tokenizer, transform_messages(request.text))
            rows.append(EngineRequest(prompt=prompt, mix={adapter: 1.0}, params=greedy))
            rows += [
                EngineRequest(
                    prompt=prompt,
                    mix={adapter: 1.0},
                    params=SamplingParams(
                        max_new_tokens=sampling.max_new_tokens,
                        temperature=sampling.temperature,
                        top_p=0.95,
                        seed=seed,
                    ),
                )
                for seed in range(sampling.adapter_samples)
            ]
        return rows

    def _nearest(self, request: StyleRequest) -> list[Example]:
        """The persona's authored examples in the input's language most like the input."""
        vector = ngram_vector(request.text)
        pool = self._pool.get((request.persona.id, request.language), [])
        nearest = sorted(pool, key=lambda entry: cosine(vector, entry[0]), reverse=True)
        return [
            Example(input=r.input, target=r.target, intensity=r.intensity)
            for _, r in nearest[: self._sampling.few_shot]
        ]


def build(settings: Settings) -> CorpusTeacher:
    """The embedded base with every persona's stable adapter resident, and the judge."""
    profiles = load_profiles(settings.resolved_personas_dir)
    engine = build_engine(settings, max_adapters=len(profiles))
    sessions = open_store(settings.resolved_database_url)
    adapters: dict[str, str] = {}
    for persona in sorted(profiles):
        with sessions() as session:  # the record is read inside its session
            stable = adapter_store.adapter_with_status(
                session, persona=persona, status=AdapterStatus.STABLE
            )
            if stable is not None:
                adapters[persona] = f"{persona}@{stable.version}"
                make_resident(
                    engine, stable, name=adapters[persona], cache_dir=settings.adapter_cache_dir
                )
    judge = load_or_train(profiles, settings.judge_dir)
    return CorpusTeacher(engine, judge.classifier, ContentCheck(), adapters=adapters)
