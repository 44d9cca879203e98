"""A relabel run: sampled interactions → teacher → quality filters → a dataset version.

The run's picks are stored before the teacher sees anything, and every batch of targets
is committed as it arrives, so a run that is interrupted (killed, teacher down) loses
nothing: the same command later resumes the newest unfinished run with the same
settings, labels only what is still pending, and writes the dataset version once, in
the transaction that marks the run succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from kizuna.datasets.content import ContentCheck
from kizuna.datasets.export import export_dataset
from kizuna.datasets.pairs import StyledPair
from kizuna.datasets.quality import QualityConfig, QualityReport, filter_pairs
from kizuna.evaluation.classifier import PersonaClassifier
from kizuna.personas.loader import unknown_persona
from kizuna.personas.schema import PersonaProfile
from kizuna.sampler.pool import candidates
from kizuna.sampler.selection import SamplerConfig, select
from kizuna.store import datasets, labelling, runs
from kizuna.store.db import transaction
from kizuna.store.models import JsonDict, LabellingPick, PickOutcome, Run, RunKind, RunPhase
from kizuna.teacher.base import StyleRequest, Teacher, TeacherUnavailableError

TEACHER_BATCH = 8

#: Called with (pairs labelled so far, pairs to label in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RelabelConfig:
    """What to label, how much, and with which teacher."""

    budget: int
    teacher: str
    persona: str | None = None
    diversity: float = SamplerConfig.diversity
    score: str = SamplerConfig.score

    def sampler(self) -> SamplerConfig:
        """The sampler settings: ``budget`` per persona and in all."""
        return SamplerConfig(
            per_persona_budget=self.budget,
            global_budget=self.budget,
            score=self.score,  # type: ignore[arg-type]  # SamplerConfig rejects bad names
            diversity=self.diversity,
        )

    @property
    def dataset_name(self) -> str:
        """Versions of one persona's relabelled data share a name."""
        return f"relabel-{self.persona or 'all'}"


@dataclass(frozen=True)
class RelabelResult:
    """What a run produced."""

    run_id: int
    resumed: bool
    picked: int
    dataset_version: int | None
    report: QualityReport | None
    export_path: Path | None


def _start_or_resume(session: Session, config: RelabelConfig) -> tuple[Run, bool]:
    settings: JsonDict = asdict(config)
    run = runs.unfinished_run(session, kind=RunKind.RELABEL, config=settings)
    if run is not None:
        return run, True
    sampler = config.sampler()
    pool = {c.interaction_id: c for c in candidates(session, persona=config.persona)}
    picks = select(list(pool.values()), sampler)
    run = runs.create_run(session, kind=RunKind.RELABEL, persona=config.persona, config=settings)
    labelling.record_picks(
        session,
        run_id=run.id,
        picks=(
            labelling.PickRecord(
                interaction_id=pick.interaction_id,
                persona=pick.persona,
                strength=pool[pick.interaction_id].strength,
                score=pick.score,
                rank=pick.rank,
                max_similarity=pick.max_similarity,
                reason=pick.reason,
                input=pool[pick.interaction_id].text,
            )
            for pick in picks
        ),
    )
    runs.update_run(session, run_id=run.id, phase=RunPhase.RUNNING, message="labelling")
    return run, False


def _label_pending(
    factory: sessionmaker[Session],
    run_id: int,
    teacher: Teacher,
    profiles: Mapping[str, PersonaProfile],
    on_progress: Progress | None,
) -> int:
    with factory() as session:
        picks = labelling.picks_of(session, run_id=run_id)
    total = len(picks)
    pending = [pick for pick in picks if pick.outcome == PickOutcome.PENDING]
    done = total - len(pending)
    if on_progress is not None:
        on_progress(done, total)
    for start in range(0, len(pending), TEACHER_BATCH):
        chunk = pending[start : start + TEACHER_BATCH]
        requests = [_request(pick, profiles) for pick in chunk]
        try:
            targets = teacher.relabel(requests)
        except TeacherUnavailableError as error:
            with transaction(factory) as session:
                runs.update_run(
                    session,
                    run_id=run_id,
                    message=f"interrupted after {done}/{total}: {error}; run the same "
                    "command again to resume",
                )
            raise
        done += len(chunk)
        with transaction(factory) as session:
            labelling.set_targets(
                session, {pick.id: target for pick, target in zip(chunk, targets, strict=True)}
            )
            runs.update_run(
                session, run_id=run_id, progress=0.9 * done / max(total, 1), message="labelling"
            )
        if on_progress is not None:
            on_progress(done, total)
    return total


def _request(pick: LabellingPick, profiles: Mapping[str, PersonaProfile]) -> StyleRequest:
    return StyleRequest(text=pick.input, persona=profiles[pick.persona], strength=pick.strength)


def _pair(pick: LabellingPick, teacher: Teacher) -> StyledPair:
    return StyledPair(
        input=pick.input,
        target=pick.target or "",
        persona=pick.persona,
        strength=pick.strength,
        source_interaction_id=pick.interaction_id,
        extra={"teacher": teacher.name, "sampler_score": pick.score, "sampler_rank": pick.rank},
    )


@dataclass(frozen=True)
class Checks:
    """What a relabelled pair must pass besides the cheap filters: content, and style
    by the persona judge where one is given."""

    content: ContentCheck
    judge: PersonaClassifier | None = None


def _finish(
    factory: sessionmaker[Session],
    run_id: int,
    config: RelabelConfig,
    teacher: Teacher,
    profiles: Mapping[str, PersonaProfile],
    checks: Checks,
    quality: QualityConfig,
) -> tuple[int, QualityReport]:
    with factory() as session:
        picks = list(labelling.picks_of(session, run_id=run_id, outcome=PickOutcome.LABELLED))
    pairs = [_pair(pick, teacher) for pick in picks]
    kept, reasons, report = filter_pairs(
        pairs, profiles, content=checks.content, judge=checks.judge, config=quality
    )
    with transaction(factory) as session:
        run = session.get_one(Run, run_id, with_for_update=True)
        if run.phase == RunPhase.SUCCEEDED:  # another process finished it meanwhile
            raise RuntimeError(f"relabel run {run_id} was finished by another process")
        labelling.set_outcomes(session, {pick.id: reasons.get(i) for i, pick in enumerate(picks)})
        dataset = datasets.create_dataset_version(
            session,
            name=config.dataset_name,
            persona=config.persona,
            rows=[pairs[i].row_record() for i in kept],
            provenance={
                "run_id": run_id,
                "teacher": {"name": teacher.name, "version": teacher.version},
                "sampler": asdict(config.sampler()),
                "quality": report.to_json(),
                "source_interaction_ids": [pairs[i].source_interaction_id for i in kept],
            },
        )
        runs.update_run(
            session,
            run_id=run_id,
            phase=RunPhase.SUCCEEDED,
            progress=1.0,
            message=f"{config.dataset_name} v{dataset.version}: {report.kept} of "
            f"{report.total} pairs kept",
            metrics={
                "dataset": config.dataset_name,
                "dataset_version": dataset.version,
                "kept": report.kept,
                "dropped": dict(report.dropped),
            },
        )
        return dataset.version, report


def relabel(
    factory: sessionmaker[Session],
    config: RelabelConfig,
    *,
    teacher: Teacher,
    profiles: Mapping[str, PersonaProfile],
    export_dir: Path,
    checks: Checks | None = None,
    quality: QualityConfig | None = None,
    on_progress: Progress | None = None,
) -> RelabelResult:
    """Run (or resume) a relabel run to a new dataset version, exported as JSONL."""
    if config.persona is not None and config.persona not in profiles:
        raise unknown_persona(config.persona, profiles)
    with transaction(factory) as session:
        run, resumed = _start_or_resume(session, config)
        run_id = run.id
    picked = _label_pending(factory, run_id, teacher, profiles, on_progress)
    if picked == 0:
        with transaction(factory) as session:
            runs.update_run(
                session,
                run_id=run_id,
                phase=RunPhase.SUCCEEDED,
                progress=1.0,
                message="nothing to label: no consented, unlabelled interactions",
            )
        return RelabelResult(run_id, resumed, 0, None, None, None)
    version, report = _finish(
        factory,
        run_id,
        config,
        teacher,
        profiles,
        checks or Checks(ContentCheck()),
        quality or QualityConfig(),
    )
    path = export_dir / f"{config.dataset_name}-v{version}.jsonl"
    with factory() as session:
        export_dataset(session, name=config.dataset_name, version=version, path=path)
    return RelabelResult(run_id, resumed, picked, version, report, path)
