"""Bootstrap end to end on the tiny model: real store, real artifacts, real training."""

from pathlib import Path

import pytest

from kizuna.artifacts import ArtifactIntegrityError
from kizuna.bootstrap import bootstrap
from kizuna.config import Settings
from kizuna.model.finetune import FinetuneArgs
from kizuna.model.generation import SamplingParams
from kizuna.store import adapters
from kizuna.store.db import make_engine, session_factory
from kizuna.store.models import AdapterStatus, RunKind, RunPhase
from kizuna.store.runs import list_runs
from kizuna.transform import PersonaModel

pytestmark = pytest.mark.integration
FAST = FinetuneArgs(steps=3, batch_size=4)


class Recorder:
    def __init__(self) -> None:
        self.stages: list[tuple[str, int | None]] = []
        self.steps = 0

    def stage(self, description: str, total: int | None = None) -> None:
        self.stages.append((description, total))

    def advance(self, steps: int = 1, *, note: str = "") -> None:
        self.steps += steps


def _sessions(settings: Settings):
    return session_factory(make_engine(settings.resolved_database_url))


def test_bootstrap_registers_a_stable_v1_per_persona_and_is_idempotent(settings: Settings) -> None:
    progress = Recorder()
    report = bootstrap(settings, progress=progress, args=FAST, personas=["tsundere", "cool"])
    assert {(a.persona, a.version, a.trained) for a in report.adapters} == {
        ("tsundere", 1, True),
        ("cool", 1, True),
    }
    # One shared pass trains both: three steps, not three per persona.
    assert ("Training 2 adapter(s) together", 3) in progress.stages and progress.steps == 3
    with _sessions(settings)() as session:
        stable = adapters.stable_adapter(session, persona="tsundere")
        assert stable.lineage["source"] == "bootstrap"
        assert stable.lineage["trained_with"] == ["cool", "tsundere"]
        assert stable.lineage["base_model"] == settings.base_model
        assert stable.metrics["train_loss_final"] > 0
        run = list_runs(session, kind=RunKind.BOOTSTRAP)[0]
        assert run.phase == RunPhase.SUCCEEDED and run.progress == 1.0

    again = bootstrap(settings, progress=Recorder(), args=FAST, personas=["tsundere", "cool"])
    assert all(not outcome.trained for outcome in again.adapters)

    forced = bootstrap(settings, progress=Recorder(), args=FAST, personas=["cool"], force=True)
    assert [(a.version, a.trained) for a in forced.adapters] == [(2, True)]
    with _sessions(settings)() as session:
        assert (
            adapters.get_adapter(session, persona="cool", version=1).status == AdapterStatus.RETIRED
        )
        assert adapters.stable_adapter(session, persona="cool").version == 2


def test_unknown_personas_are_refused_before_any_work(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown persona"):
        bootstrap(settings, progress=Recorder(), args=FAST, personas=["pirate"])


def test_transform_uses_the_stable_adapter_and_reports_entropy(settings: Settings) -> None:
    bootstrap(settings, progress=Recorder(), args=FAST, personas=["sly"])
    model = PersonaModel(settings, persona="sly")
    result = model.transform(
        "I will wait for you.", strength=0.8, params=SamplingParams(max_new_tokens=8)
    )
    assert (result.persona, result.adapter_version, result.strength) == ("sly", 1, 0.8)
    assert 0 < result.new_tokens <= 8
    assert len(result.token_entropies) == result.new_tokens
    assert result.entropy_max >= result.entropy_mean > 0
    with pytest.raises(ValueError, match="empty"):
        model.transform("   ", strength=0.5, params=SamplingParams())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.transform("hi", strength=1.5, params=SamplingParams())


def test_a_corrupted_artifact_is_refused_and_the_registry_is_untouched(settings: Settings) -> None:
    bootstrap(settings, progress=Recorder(), args=FAST, personas=["gentle"])
    with _sessions(settings)() as session:
        stable = adapters.stable_adapter(session, persona="gentle")
    weights = Path(stable.artifact_url.removeprefix("file://")) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactIntegrityError, match="corrupted"):
        PersonaModel(settings, persona="gentle")
    with _sessions(settings)() as session:
        assert adapters.stable_adapter(session, persona="gentle").version == stable.version
