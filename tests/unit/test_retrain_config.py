"""The retrain job's config file, data selection and teacher choice, without training."""

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from kizuna.store.adapters import register_adapter
from kizuna.store.datasets import RowRecord, create_dataset_version
from kizuna.store.db import open_store, transaction
from kizuna.store.models import AdapterStatus
from kizuna_jobs.retrain import (
    DatasetUse,
    RetrainConfig,
    UserError,
    deepspeed_config,
    load_config,
    logit_teacher_for,
    parse_config,
    training_rows,
    warm_start_adapter,
)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return open_store(f"sqlite:///{tmp_path / 'store.db'}")


def _rows(persona: str, n: int, *, split: str = "train", strength: float = 0.6) -> list[RowRecord]:
    return [
        RowRecord(
            input=f"{persona} input {i}",
            target=f"{persona} target {i}",
            metadata={"personality": persona, "strength": strength},
            split=split,
        )
        for i in range(n)
    ]


def _dataset(
    sessions: sessionmaker[Session], name: str, rows: list[RowRecord], teacher: str | None
) -> None:
    provenance = {"teacher": {"name": teacher}} if teacher else {}
    with transaction(sessions) as session:
        create_dataset_version(session, name=name, rows=rows, provenance=provenance)


def test_config_file_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "retrain.yaml"
    path.write_text("persona: tsundere\nsteps: 0\ntrainer: {strategy: horovod}\nextra: 1\n")
    with pytest.raises(UserError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "steps" in message and "trainer.strategy" in message and "extra" in message
    with pytest.raises(UserError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_defaults_are_zero2_on_two_cpu_workers(tmp_path: Path) -> None:
    path = tmp_path / "retrain.yaml"
    path.write_text("persona: tsundere\n")
    config = load_config(path)
    assert (config.trainer.workers, config.trainer.strategy, config.trainer.zero_stage) == (
        2,
        "deepspeed",
        2,
    )
    assert (config.alpha, config.temperature, config.warm_start) == (0.5, 2.0, "stable")


def test_default_data_is_the_personas_relabelled_rows_then_the_corpus(
    sessions: sessionmaker[Session],
) -> None:
    _dataset(sessions, "relabel-tsundere", _rows("tsundere", 3), "openai")
    _dataset(
        sessions,
        "authored",
        _rows("tsundere", 10) + _rows("cool", 10) + _rows("tsundere", 5, split="test"),
        None,
    )
    _dataset(sessions, "parallel-rules", _rows("tsundere", 10), "rules")  # not a default
    config = RetrainConfig(persona="tsundere", max_rows=8)
    with sessions() as session:
        pairs, uses = training_rows(session, config)
    assert [p.input for p in pairs[:3]] == [f"tsundere input {i}" for i in range(3)]
    assert len(pairs) == 8 and all(p.input.startswith("tsundere") for p in pairs)
    assert all(p.strength == 0.6 for p in pairs)
    assert uses == [
        DatasetUse("relabel-tsundere", 1, 3, "openai"),
        DatasetUse("authored", 1, 5, None),
    ]


def test_named_versions_and_missing_data_are_clear(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(UserError, match="kizuna bootstrap"):
        training_rows(session, RetrainConfig(persona="tsundere"))
    _dataset(sessions, "parallel-rules", _rows("cool", 4), "rules")
    _dataset(sessions, "parallel-rules", _rows("tsundere", 4), "rules")
    with sessions() as session:
        pairs, uses = training_rows(
            session, RetrainConfig(persona="tsundere", datasets=["parallel-rules@2"])
        )
        assert len(pairs) == 4 and uses[0].version == 2
        with pytest.raises(UserError, match="no rows of 'tsundere'"):
            training_rows(session, RetrainConfig(persona="tsundere", datasets=["parallel-rules@1"]))
        with pytest.raises(UserError, match="version 9"):
            training_rows(session, RetrainConfig(persona="tsundere", datasets=["parallel-rules@9"]))
        with pytest.raises(UserError, match="must be a number"):
            training_rows(session, RetrainConfig(persona="tsundere", datasets=["x@latest"]))


def test_the_kl_term_needs_a_teacher_that_gives_logits() -> None:
    prompted = [DatasetUse("relabel-tsundere", 1, 5, "prompted")]
    mixed = [*prompted, DatasetUse("parallel-rules", 1, 5, "rules")]
    assert logit_teacher_for(RetrainConfig(persona="t"), prompted) == "prompted"
    assert logit_teacher_for(RetrainConfig(persona="t"), mixed) is None
    assert logit_teacher_for(RetrainConfig(persona="t", teacher="hf"), mixed) == "hf"
    with pytest.raises(UserError, match="gives no logits"):
        logit_teacher_for(RetrainConfig(persona="t", teacher="rules"), mixed)


def test_warm_start_from_stable_or_the_latest_federated_adapter(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, pytest.raises(UserError, match="kizuna bootstrap"):
        warm_start_adapter(session, RetrainConfig(persona="tsundere"))
    with transaction(sessions) as session:
        for lineage, status in [
            ({"source": "bootstrap"}, AdapterStatus.STABLE),
            ({"source": "federated", "epsilon": 1.5}, AdapterStatus.CANDIDATE),
            ({"source": "retrain"}, AdapterStatus.CANDIDATE),
        ]:
            register_adapter(
                session,
                persona="tsundere",
                artifact_url="file:///a",
                sha256="0" * 64,
                status=status,
                lineage=lineage,
            )
    with sessions() as session:
        assert warm_start_adapter(session, RetrainConfig(persona="tsundere")).version == 1
        federated = warm_start_adapter(
            session, RetrainConfig(persona="tsundere", warm_start="federated")
        )
        assert federated.version == 2
        with pytest.raises(UserError, match="no federated adapter"):
            warm_start_adapter(session, RetrainConfig(persona="cool", warm_start="federated"))


def test_deepspeed_config_is_zero_with_bf16_only_on_gpus() -> None:
    from kizuna_jobs.retrain import WorkerPlan

    plan = WorkerPlan(
        settings={},
        persona="t",
        rows=[],
        warm_start_url="file:///a",
        warm_start_sha256="0",
        logit_teacher=None,
        strategy="deepspeed",
        zero_stage=2,
        steps=1,
        batch_size=4,
        learning_rate=1e-3,
        max_length=64,
        alpha=0.5,
        temperature=2.0,
        checkpoint_every=1,
        seed=0,
        run_id=None,
    )
    cpu, gpu = deepspeed_config(plan, use_gpu=False), deepspeed_config(plan, use_gpu=True)
    assert cpu["zero_optimization"] == {"stage": 2}
    assert cpu["train_micro_batch_size_per_gpu"] == 4
    assert (cpu["bf16"]["enabled"], gpu["bf16"]["enabled"]) == (False, True)


def test_a_rayjob_passes_its_config_as_json_text() -> None:
    config = parse_config('{"persona": "cool", "job_name": "cool-1-retrain"}', source="x")
    assert config.job_name == "cool-1-retrain"
    with pytest.raises(UserError, match="--config-json: stepz"):
        parse_config('{"persona": "cool", "stepz": 1}', source="--config-json")
