"""The retrain job on real Ray Train: DeepSpeed ZeRO-2 and DDP on two CPU workers, a
worker killed mid-run, and the candidate it registers (tiny model, real everything)."""

import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from cli_runner import kizuna
from ray.util.state import list_actors
from safetensors.torch import load_file
from sqlalchemy.orm import Session, sessionmaker

from kizuna.artifacts import fetch_directory
from kizuna.config import Settings
from kizuna.store.adapters import get_adapter
from kizuna.store.db import open_store
from kizuna.store.models import AdapterStatus, Run, RunKind, RunPhase
from kizuna.store.runs import list_runs
from kizuna_jobs.retrain import RetrainConfig, run_retrain

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL_EVALUATION = {
    "per_language": 2,
    "max_new_tokens": 6,
    "latency_samples": 2,
}


@pytest.fixture
def installed(bootstrapped: Settings) -> Settings:
    """A store with a stable tsundere adapter and the authored corpus (bootstrap stores it)."""
    return bootstrapped


@pytest.fixture
def local_ray() -> Iterator[None]:
    yield
    ray.shutdown()


def _run(settings: Settings) -> Run | None:
    """The newest retrain run, if one has started."""
    with _sessions(settings.resolved_database_url)() as session:
        return next(iter(list_runs(session, kind=RunKind.RETRAIN)), None)


@functools.cache
def _sessions(url: str) -> sessionmaker[Session]:
    # Opened once, on the test's thread: opening migrates, and Alembic is not thread-safe.
    return open_store(url)


def _config(**changes: Any) -> RetrainConfig:
    base: dict[str, Any] = {
        "persona": "tsundere",
        "steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "evaluation": SMALL_EVALUATION,
    }
    return RetrainConfig.model_validate(base | changes)


def test_kizuna_retrain_runs_zero2_and_registers_a_candidate_with_its_report(
    installed: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 4, "evaluation": SMALL_EVALUATION}))
    env = {
        "KIZUNA_DATA_DIR": str(installed.data_dir),
        "KIZUNA_BASE_MODEL": installed.base_model,
        "KIZUNA_DEVICE": "cpu",
    }
    result = kizuna(
        "retrain", "--persona", "tsundere", "--config", str(config), "--steps", "4", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tsundere v2 registered as candidate" in result.stdout

    run = _run(installed)
    assert run is not None
    assert (run.phase, run.progress) == (RunPhase.SUCCEEDED, 1.0)
    assert run.metrics["attempts"] == [{"start_step": 0}]
    assert [h["step"] for h in run.metrics["history"]] == [1, 2, 3, 4]
    assert all(h["tokens_per_s"] > 0 for h in run.metrics["history"])
    with open_store(installed.resolved_database_url)() as session:
        candidate = get_adapter(session, persona="tsundere", version=2)
        stable = get_adapter(session, persona="tsundere", version=1)
        assert (candidate.status, stable.status) == (AdapterStatus.CANDIDATE, AdapterStatus.STABLE)
        lineage, metrics = candidate.lineage, candidate.metrics
        files = fetch_directory(
            candidate.artifact_url, sha256=candidate.sha256, cache_dir=tmp_path / "cache"
        )
        warm = fetch_directory(
            stable.artifact_url, sha256=stable.sha256, cache_dir=tmp_path / "cache"
        )
    assert lineage["trainer"]["strategy"] == "deepspeed"
    assert lineage["trainer"]["zero_stage"] == 2 and lineage["trainer"]["workers"] == 2
    assert lineage["warm_start"] == {"source": "stable", "version": 1, "sha256": stable.sha256}
    assert lineage["datasets"][0]["name"] == "authored"  # the default when nothing is relabelled
    assert lineage["teacher"]["logits"] is None  # authored targets: sequence-level KD
    assert lineage["base_model"] == installed.base_model and lineage["code_version"]
    assert set(metrics) >= {"style_accuracy", "content_preservation", "gates_passed", "report"}

    # The artifact holds the trained adapter, its int8 variant and both reports.
    assert (files / "int8" / "adapter_int8.safetensors").is_file()
    trained = load_file(str(files / "adapter_model.safetensors"))
    start = load_file(str(warm / "adapter_model.safetensors"))
    assert trained.keys() == start.keys()
    assert any(not trained[k].equal(start[k]) for k in trained)
    report = json.loads((files / "evaluation" / "report.json").read_text())
    assert report["run_id"] == run.id
    assert set(report["evaluation"]["variants"]) == {
        "candidate",
        "stable",
        "rules",
        "candidate-int8",
    }
    assert report["classifier_heldout_accuracy"] > 0.5
    assert report["sizes"]["adapter_int8_bytes"] < report["sizes"]["adapter_fp32_bytes"]
    assert "data:image/png;base64," in (files / "evaluation" / "report.html").read_text()


def test_ddp_distills_the_prompted_teachers_logits(installed: Settings, local_ray: None) -> None:
    outcome = run_retrain(
        _config(teacher="prompted", trainer={"strategy": "ddp", "workers": 2}), installed
    )
    with open_store(installed.resolved_database_url)() as session:
        lineage = get_adapter(session, persona="tsundere", version=outcome.version).lineage
    assert lineage["teacher"]["logits"] == "prompted"
    assert lineage["teacher"]["distillation"].startswith("logit")
    assert lineage["trainer"]["strategy"] == "ddp"
    run = _run(installed)
    assert run is not None and run.phase == RunPhase.SUCCEEDED


def _kill_a_worker_once_past(settings: Settings, step: int, killed: list[int]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run = _run(settings)
        if run is not None and run.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
            return
        if run is not None and run.metrics.get("step", 0) >= step:
            workers = list_actors(
                address=ray.get_runtime_context().gcs_address,
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            )
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(run.metrics["step"])
                return
        time.sleep(0.05)


@pytest.mark.reliability
def test_a_killed_worker_resumes_from_the_last_checkpoint(
    installed: Settings, local_ray: None
) -> None:
    config = _config(steps=60, checkpoint_every=5, max_failures=1)
    ray.init(logging_level=logging.ERROR, log_to_driver=False)
    _sessions(installed.resolved_database_url)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_once_past, args=(installed, 12, killed))
    killer.start()
    outcome = run_retrain(config, installed)
    killer.join()

    assert killed, "the run finished before a worker could be killed"
    run = _run(installed)
    assert run is not None and run.phase == RunPhase.SUCCEEDED
    first, second = run.metrics["attempts"]
    assert first == {"start_step": 0}
    # Resumed from a checkpoint (every 5 steps) at or before the step it was killed at.
    assert second["start_step"] in (5, 10), (second, killed)
    assert second["start_step"] <= killed[0]
    assert [h["step"] for h in run.metrics["history"]] == list(range(1, 61))
    assert outcome.version == 2
