"""How well each persona's stable adapter rewrites held-out inputs, per language and strength.

Every persona's stable adapter (``kizuna bootstrap`` writes them; run it first) rewrites
the authored corpus's held-out inputs (never trained on) in English and Chinese at
s = 0.3 / 0.6 / 1.0, all personas in the same mixed batches, greedy. Each cell is scored
by the persona judge (style accuracy: share of outputs it attributes to the persona),
the content check (facts kept and meaning close), loop rate (a 4-gram three times or
more), prompt leakage and distinct-2. The goals (issue 17): style ≥ 0.80 at s = 1.0,
content ≥ 0.85, loops ≤ 2 %, no leakage, style rising with strength. A few samples per
persona and language are printed under the table, to be read, not only counted.

    KIZUNA_DATA_DIR=.data python benchmarks/persona_quality.py [--per-language 48]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.corpus import CORPUS_STRENGTHS
from kizuna.datasets.persona_corpus import LANGUAGES, heldout_texts
from kizuna.evaluation.candidate import generate_transforms
from kizuna.evaluation.classifier import load_or_train
from kizuna.evaluation.metrics import (
    content_preservation,
    distinct_n,
    leakage_rate,
    loop_rate,
    style_accuracy,
)
from kizuna.model.engine import Engine, build_engine
from kizuna.model.generation import SamplingParams
from kizuna.personas import load_profiles
from kizuna.personas.schema import Language
from kizuna.serve.adapters import make_resident
from kizuna.store import adapters as adapter_store
from kizuna.store.db import open_store
from kizuna.teacher.base import language_of

Cell = tuple[str, Language, float]  # persona, language, strength


def _load_stable_adapters(settings: Settings, personas: Sequence[str]) -> Engine:
    engine = build_engine(settings, max_adapters=len(personas))
    sessions = open_store(settings.resolved_database_url)
    for persona in personas:
        with sessions() as session:  # the record is read inside its session
            stable = adapter_store.stable_adapter(session, persona=persona)
            make_resident(engine, stable, name=persona, cache_dir=settings.adapter_cache_dir)
    return engine


def main() -> None:
    """Generate, score and print one table (plus samples to read)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-language", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--no-repeat-ngram", type=int, default=SamplingParams.no_repeat_ngram)
    parser.add_argument(
        "--repetition-penalty", type=float, default=SamplingParams.repetition_penalty
    )
    options = parser.parse_args()
    torch.manual_seed(0)
    console = Console()
    settings = Settings()
    profiles = load_profiles(settings.resolved_personas_dir)
    personas = sorted(profiles)
    engine = _load_stable_adapters(settings, personas)
    judge = load_or_train(profiles, settings.judge_dir)
    content = ContentCheck()
    inputs = {lang: heldout_texts(lang)[: options.per_language] for lang in LANGUAGES}
    cells: list[Cell] = [
        (p, lang, s) for p in personas for lang in LANGUAGES for s in CORPUS_STRENGTHS
    ]
    rows = [(p, text, s) for p, lang, s in cells for text in inputs[lang]]
    params = replace(
        SamplingParams(max_new_tokens=options.max_new_tokens),
        no_repeat_ngram=options.no_repeat_ngram,
        repetition_penalty=options.repetition_penalty,
    )
    started = time.perf_counter()
    texts = [g.text for g in generate_transforms(engine, rows, params)]
    seconds = time.perf_counter() - started
    outputs: dict[Cell, list[str]] = {}
    for (persona, text, strength), out in zip(rows, texts, strict=True):
        outputs.setdefault((persona, language_of(text), strength), []).append(out)

    table = Table(
        title=f"persona quality on held-out inputs ({options.per_language} per language, "
        f"greedy, no-repeat {options.no_repeat_ngram}, penalty "
        f"{options.repetition_penalty:g}; judge held-out accuracy "
        + ", ".join(f"{lang} {judge.heldout[lang]['accuracy']:.2f}" for lang in LANGUAGES)
        + f"; {len(rows)} rewrites in {seconds:.0f} s)"
    )
    for column in ("persona", "lang", "s", "style", "content", "loops", "leak", "distinct-2"):
        table.add_column(column, justify="left" if column in ("persona", "lang") else "right")
    for persona, language, strength in cells:
        written = outputs[(persona, language, strength)]
        style = style_accuracy(judge.classifier, written, persona)
        kept = content_preservation(content, inputs[language], written)
        table.add_row(
            persona,
            language,
            f"{strength:g}",
            f"{style:.2f}",
            f"{kept:.2f}",
            f"{loop_rate(written):.2f}",
            f"{leakage_rate(written):.2f}",
            f"{distinct_n(written, 2):.2f}",
        )
        if strength == 1.0:
            record("persona_quality", f"{persona} {language} style at s=1", style, "goal 0.80")
    console.print(table)
    for persona in personas:
        for language in LANGUAGES:
            full = outputs[(persona, language, 1.0)]
            for source, out in list(zip(inputs[language], full, strict=True))[:3]:
                console.print(f"[dim]{persona} {language}[/dim] {source}\n    → {out}")


if __name__ == "__main__":
    main()
