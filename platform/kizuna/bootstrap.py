"""First-run setup: the embedded base model, the store schema, and a first adapter per persona.

Every step is idempotent: an intact embedded checkpoint is kept, a persona that already
has a stable adapter is skipped (unless forced), and the bootstrap is recorded as a run
in the store with its progress so the dashboard can show it.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from kizuna import __version__
from kizuna.artifacts import publish_directory
from kizuna.config import EMBEDDED_BASE_MODEL, Settings
from kizuna.datasets.pairs import split_of
from kizuna.datasets.persona_corpus import authored_rewrites, store_authored_corpus
from kizuna.model.base import load_base_model, load_tokenizer, resolve_device
from kizuna.model.embedded import build_embedded_model
from kizuna.model.finetune import FinetuneArgs, Pair
from kizuna.model.joint_finetune import train_jointly
from kizuna.model.lora import LoraShape
from kizuna.personas import INTENSITY_STRENGTH, PersonaProfile, load_profiles
from kizuna.store import adapters as adapter_store
from kizuna.store import runs as run_store
from kizuna.store.db import make_engine, session_factory, transaction, upgrade
from kizuna.store.models import AdapterStatus, RunKind, RunPhase


class Progress(Protocol):
    """Where bootstrap reports what it is doing (a rich progress bar in the CLI)."""

    def stage(self, description: str, total: int | None = None) -> None:
        """A new stage begins; ``total`` steps when it is countable."""

    def advance(self, steps: int = 1, *, note: str = "") -> None:
        """Steps of the current stage are done."""


@dataclass(frozen=True)
class AdapterOutcome:
    """What bootstrap did for one persona."""

    persona: str
    version: int
    trained: bool
    final_loss: float | None = None


@dataclass
class BootstrapReport:
    """The outcome of one bootstrap."""

    base_model: str
    base_converted: bool
    adapters: list[AdapterOutcome] = field(default_factory=list)
    seconds: float = 0.0


#: Six personas x 4 rows a step x 64 steps = 256 rows per adapter, about 8 min on 2
#: CPU cores in bf16 (~200 tokens/s); see ``benchmarks/persona_quality.py`` for what
#: more steps buy.
BOOTSTRAP_ARGS = FinetuneArgs(steps=64, batch_size=4)


def training_pairs(profile: PersonaProfile) -> list[Pair]:
    """The persona's authored rewrites of the train split, and the profile's examples
    whose inputs are in the train split, each at its intensity's strength."""
    authored = [
        Pair(input=r.input, target=r.target, strength=r.strength)
        for r in authored_rewrites([profile.id], split="train")
    ]
    examples = [
        Pair(input=ex.input, target=ex.target, strength=INTENSITY_STRENGTH[ex.intensity])
        for ex in profile.example_pairs()
        if split_of(ex.input) == "train"
    ]
    return authored + examples


def _profile_digest(profile: PersonaProfile) -> str:
    return hashlib.sha256(profile.model_dump_json().encode("utf-8")).hexdigest()


def bootstrap(
    settings: Settings,
    *,
    progress: Progress,
    args: FinetuneArgs | None = None,
    shape: LoraShape | None = None,
    personas: Sequence[str] | None = None,
    force: bool = False,
) -> BootstrapReport:
    """Make a fresh install able to transform text in every persona."""
    started = time.perf_counter()
    args, shape = args or BOOTSTRAP_ARGS, shape or LoraShape()
    base_lineage: dict[str, str] = {"base_model": settings.base_model}
    converted = False
    if settings.base_model == EMBEDDED_BASE_MODEL:
        progress.stage("Building the embedded base model", total=None)
        embedded = build_embedded_model(
            settings.embedded_model_dir, on_stage=lambda note: progress.advance(0, note=note)
        )
        base_lineage["base_sha256"] = embedded.weights_sha256
        converted = embedded.converted

    progress.stage("Migrating the store", total=None)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        store_authored_corpus(session)

    profiles = load_profiles(settings.resolved_personas_dir)
    wanted = list(personas) if personas else sorted(profiles)
    unknown = sorted(set(wanted) - set(profiles))
    if unknown:
        raise ValueError(f"unknown persona(s) {unknown}; known: {sorted(profiles)}")
    report = BootstrapReport(base_model=settings.base_model, base_converted=converted)
    with transaction(sessions) as session:
        todo = [
            pid
            for pid in wanted
            if force
            or adapter_store.adapter_with_status(session, persona=pid, status=AdapterStatus.STABLE)
            is None
        ]
        for pid in sorted(set(wanted) - set(todo)):
            stable = adapter_store.stable_adapter(session, persona=pid)
            report.adapters.append(
                AdapterOutcome(persona=pid, version=stable.version, trained=False)
            )
        run_id = run_store.create_run(
            session, kind=RunKind.BOOTSTRAP, config={"personas": todo, **asdict(args)}
        ).id
    try:
        if todo:
            plan = _TrainingPlan(args=args, shape=shape, base_lineage=base_lineage)
            _train_adapters(settings, sessions, run_id, todo, profiles, plan, progress, report)
    except BaseException as exc:
        with transaction(sessions) as session:
            run_store.update_run(session, run_id=run_id, phase=RunPhase.FAILED, message=str(exc))
        raise
    with transaction(sessions) as session:
        run_store.update_run(session, run_id=run_id, phase=RunPhase.SUCCEEDED, progress=1.0)
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class _TrainingPlan:
    args: FinetuneArgs
    shape: LoraShape
    base_lineage: dict[str, str]


def _train_adapters(
    settings: Settings,
    sessions: sessionmaker[Session],
    run_id: int,
    todo: list[str],
    profiles: dict[str, PersonaProfile],
    plan: _TrainingPlan,
    progress: Progress,
    report: BootstrapReport,
) -> None:
    device = resolve_device(settings.device)
    tokenizer = load_tokenizer(settings.resolved_base_model)
    base = load_base_model(settings.resolved_base_model, device=device)
    with transaction(sessions) as session:
        run_store.update_run(session, run_id=run_id, phase=RunPhase.RUNNING)
    progress.stage(f"Training {len(todo)} adapter(s) together", total=plan.args.steps)
    training = train_jointly(
        base,
        tokenizer,
        {pid: training_pairs(profiles[pid]) for pid in todo},
        plan.shape,
        plan.args,
        on_step=lambda step: progress.advance(1, note=f"loss {step.loss:.3f}"),
    )
    for index, pid in enumerate(todo):
        losses = training.losses[pid]
        with tempfile.TemporaryDirectory() as tmp:
            training.save_adapter(pid, Path(tmp))
            artifact = publish_directory(
                Path(tmp), root_url=settings.resolved_artifact_url, persona=pid
            )
        lineage = {
            **plan.base_lineage,
            "source": "bootstrap",
            "profile_sha256": _profile_digest(profiles[pid]),
            "lora": asdict(plan.shape),
            "finetune": asdict(plan.args),
            "trained_with": sorted(todo),
            "kizuna_version": __version__,
        }
        with transaction(sessions) as session:
            adapter = adapter_store.register_adapter(
                session,
                persona=pid,
                artifact_url=artifact.url,
                sha256=artifact.sha256,
                status=AdapterStatus.STABLE,
                lineage=lineage,
                metrics={"train_loss_first": losses[0], "train_loss_final": losses[-1]},
            )
            run_store.update_run(
                session,
                run_id=run_id,
                progress=(index + 1) / len(todo),
                message=f"{pid} v{adapter.version} registered as stable",
            )
        report.adapters.append(
            AdapterOutcome(
                persona=pid, version=adapter.version, trained=True, final_loss=losses[-1]
            )
        )
