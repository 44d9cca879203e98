"""Active vs random sampling at equal labelling budget, on the embedded model.

Simulated traffic: neutral sentences from the shipped corpus's train split, each served
by the persona's stable (bootstrap) adapter, which records every token's entropy. Held
out: the hardest inputs of the test split (highest mean entropy under the same adapter).
Two arms label the same number of interactions with the ``rules`` teacher and fine-tune
a copy of the stable adapter on them with the same steps and seed:

- active: Kizuna's sampler (mean entropy, MMR diversity);
- random: a uniform sample of the pool (several seeds, averaged).

Both arms, and the stable adapter they started from, are then scored on the hard set:
style accuracy (the persona classifier) and content preservation (MiniLM / chrF).
Needs the embedded model and a stable adapter (``make demo``).

    KIZUNA_DATA_DIR=.data python benchmarks/active_vs_random.py [--budget 32] [--steps 24]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.artifacts import fetch_directory
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.corpus import neutral_sentences
from kizuna.datasets.pairs import split_of
from kizuna.evaluation.candidate import generate_transforms
from kizuna.evaluation.classifier import PersonaClassifier, training_texts
from kizuna.evaluation.metrics import content_preservation, style_accuracy
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine
from kizuna.model.finetune import FinetuneArgs, Pair, train_lora
from kizuna.model.generation import Generation
from kizuna.model.lora import load_adapter
from kizuna.personas import load_profiles
from kizuna.sampler.selection import Candidate, SamplerConfig, select
from kizuna.store.adapters import resolve_adapter
from kizuna.store.db import open_store
from kizuna.teacher.base import StyleRequest, language_of
from kizuna.teacher.rules import RulesTeacher

console = Console(stderr=True)
STRENGTH = 1.0


@dataclass(frozen=True)
class Scores:
    """One adapter's numbers on the hard set."""

    style: float
    style_probability: float
    content: float


def _generate(engine: Engine, adapter: str, texts: Sequence[str], tokens: int) -> list[Generation]:
    return generate_transforms(engine, [(adapter, text, STRENGTH) for text in texts], tokens)


def _train(
    base_path: str, stable_dir: Path, pairs: list[Pair], args: FinetuneArgs, out: Path
) -> Path:
    base = load_base_model(base_path, device=torch.device("cpu"))
    model = load_adapter(base, stable_dir, name="default", trainable=True)
    train_lora(model, load_tokenizer(base_path), pairs, args)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def main() -> None:
    """Run both arms and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="tsundere")
    parser.add_argument("--budget", type=int, default=32, help="labels per arm")
    parser.add_argument("--pool", type=int, default=160, help="simulated interactions")
    parser.add_argument("--hard", type=int, default=32, help="held-out hard inputs")
    parser.add_argument("--steps", type=int, default=24, help="fine-tuning steps per arm")
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per evaluated output")
    options = parser.parse_args()
    started = time.perf_counter()
    settings = Settings()
    profiles = load_profiles(settings.resolved_personas_dir)
    profile = profiles[options.persona]
    factory = open_store(settings.resolved_database_url)
    with factory() as session:
        stable = resolve_adapter(session, persona=options.persona)
    stable_dir = fetch_directory(
        stable.artifact_url, sha256=stable.sha256, cache_dir=settings.adapter_cache_dir
    )
    base_path = settings.resolved_base_model
    engine = Engine(
        load_base_model(base_path, device=torch.device("cpu")),
        load_tokenizer(base_path),
        max_adapters=8,
    )
    engine.load_adapter("stable", stable_dir)

    # Interleave languages so that a prefix of either split has both.
    english, chinese = neutral_sentences("en"), neutral_sentences("zh")
    mixed = [text for pair in zip(english, chinese, strict=False) for text in pair]
    pool_texts = [s for s in mixed if split_of(s) == "train"][: options.pool]
    test_texts = [s for s in mixed if split_of(s) == "test"][: options.hard * 4]

    console.print(f"serving {len(pool_texts) + len(test_texts)} simulated requests…")
    pool_gen = _generate(engine, "stable", pool_texts, 12)
    test_gen = _generate(engine, "stable", test_texts, 12)
    hardest = sorted(range(len(test_texts)), key=lambda i: -test_gen[i].entropy_mean)
    hard = [test_texts[i] for i in hardest[: options.hard]]

    candidates = [
        Candidate(
            interaction_id=i,
            persona=options.persona,
            text=text,
            entropy_mean=generation.entropy_mean,
            entropy_max=generation.entropy_max,
            consent=True,
            strength=STRENGTH,
        )
        for i, (text, generation) in enumerate(zip(pool_texts, pool_gen, strict=True))
    ]
    sampler = SamplerConfig(per_persona_budget=options.budget, global_budget=options.budget)
    arms = {
        "active (entropy + MMR)": [
            pool_texts[p.interaction_id] for p in select(candidates, sampler)
        ]
    }
    for seed in range(options.random_seeds):
        arms[f"random (seed {seed})"] = random.Random(seed).sample(pool_texts, options.budget)

    teacher = RulesTeacher()
    args = FinetuneArgs(steps=options.steps, batch_size=8, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        for n, (arm, texts) in enumerate(arms.items()):
            console.print(f"training {arm} on {len(texts)} labelled interactions…")
            targets = teacher.relabel([StyleRequest(t, profile, STRENGTH) for t in texts])
            pairs = [Pair(t, target, STRENGTH) for t, target in zip(texts, targets, strict=True)]
            directory = _train(base_path, stable_dir, pairs, args, Path(scratch) / f"arm{n}")
            engine.load_adapter(arm, directory)

        console.print("training the persona classifier…")
        train, _ = training_texts(profiles)
        classifier = PersonaClassifier.train(train)
        content = ContentCheck()
        scores: dict[str, Scores] = {}
        for arm in ["stable", *arms]:
            console.print(f"evaluating {arm} on {len(hard)} hard inputs…")
            outputs = [g.text for g in _generate(engine, arm, hard, options.tokens)]
            scores[arm] = Scores(
                style=style_accuracy(classifier, outputs, options.persona),
                style_probability=statistics.mean(
                    classifier.persona_score(outputs, options.persona)
                ),
                content=content_preservation(content, hard, outputs),
            )

    random_arms = [arm for arm in arms if arm.startswith("random")]
    random_mean = Scores(
        style=statistics.mean(scores[a].style for a in random_arms),
        style_probability=statistics.mean(scores[a].style_probability for a in random_arms),
        content=statistics.mean(scores[a].content for a in random_arms),
    )
    active = scores[next(iter(arms))]
    zh_share = {
        arm: sum(language_of(t) == "zh" for t in texts) / len(texts)
        for arm, texts in {**arms, "hard": hard}.items()
    }
    table = Table(
        title=f"{options.persona}: {options.budget} labels per arm, {options.steps} steps, "
        f"{len(hard)} hard held-out inputs ({zh_share['hard']:.0%} Chinese), "
        f"{time.perf_counter() - started:.0f} s"
    )
    table.add_column("adapter")
    for column in ("labels in Chinese", "style accuracy", "style p(persona)", "content"):
        table.add_column(column, justify="right")

    def row(name: str, share: str, values: Scores) -> None:
        numbers = (values.style, values.style_probability, values.content)
        table.add_row(name, share, *(f"{n:.3f}" for n in numbers))

    row("stable (start)", "-", scores["stable"])
    for arm in arms:
        row(arm, f"{zh_share[arm]:.0%}", scores[arm])
    row("random (mean)", "-", random_mean)
    ratios = (
        active.style / max(random_mean.style, 1e-9),
        active.style_probability / max(random_mean.style_probability, 1e-9),
        active.content / max(random_mean.content, 1e-9),
    )
    table.add_row("active ÷ random (mean)", "-", *(f"{r:.2f}" for r in ratios))
    for figure, ratio in zip(
        ("style accuracy", "style p(persona)", "content"), ratios, strict=True
    ):
        record("active learning", f"{figure}, active sampling", ratio, "random sampling (mean)")
    Console().print(table)


if __name__ == "__main__":
    main()
