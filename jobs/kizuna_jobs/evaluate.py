"""The evaluation stage of a retrain, run as a Ray task next to the trained checkpoint.

It quantizes the candidate to int8, evaluates it (and the int8 variant) against the
stable adapter on held-out inputs, checks the persona's gates, writes the JSON and HTML
reports, and publishes adapter + int8 variant + reports as one content-addressed
artifact, so the registry's sha256 covers everything a rollout decision rests on.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train

from kizuna.artifacts import PublishedArtifact, fetch_directory, publish_directory
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.evaluation.candidate import (
    CANDIDATE,
    STABLE,
    EvaluationPlan,
    Scorers,
    evaluate_candidate,
    heldout_inputs,
)
from kizuna.evaluation.classifier import load_or_train
from kizuna.evaluation.gates import check_gates
from kizuna.evaluation.report import write_report
from kizuna.model.engine import build_engine
from kizuna.model.quantize import directory_bytes, quantize_adapter_int8
from kizuna.personas import load_profiles
from kizuna.store.db import open_store, transaction
from kizuna.store.runs import update_run

INT8_DIR, REPORT_DIR = "int8", "evaluation"


@dataclass(frozen=True)
class EvaluationJob:
    """What the evaluation task is given (it may run on another node than the driver)."""

    checkpoint: ray.train.Checkpoint
    settings: dict[str, Any]
    persona: str
    #: The stable adapter to compare with: (artifact URL, sha256), if any.
    stable: tuple[str, str] | None
    per_language: int
    strength: float
    max_new_tokens: int
    latency_samples: int
    lineage: dict[str, Any]
    training: dict[str, Any]


class _StageReporter:
    """Evaluation stages as the run's message, so the progress bar says what is running."""

    def __init__(self, settings: Settings, run_id: int) -> None:
        self._sessions = open_store(settings.resolved_database_url)
        self._run_id = run_id

    def __call__(self, stage: str) -> None:
        with transaction(self._sessions) as session:
            update_run(session, run_id=self._run_id, message=f"evaluating: {stage}")


def evaluate_and_publish(job: EvaluationJob) -> tuple[PublishedArtifact, dict[str, Any]]:
    """Quantize, evaluate, gate, report and publish the candidate in ``job.checkpoint``."""
    settings = Settings(**job.settings)
    persona, stable, lineage = job.persona, job.stable, job.lineage
    profiles = load_profiles(settings.resolved_personas_dir)
    profile = profiles[persona]
    plan = EvaluationPlan(
        inputs=heldout_inputs(job.per_language),
        strength=job.strength,
        max_new_tokens=job.max_new_tokens,
        latency_samples=job.latency_samples,
    )
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "candidate"
        with job.checkpoint.as_directory() as directory:
            shutil.copytree(Path(directory) / "adapter", bundle)
        sizes = {"adapter_fp32_bytes": directory_bytes(bundle)}
        int8_dir = quantize_adapter_int8(bundle, bundle / INT8_DIR)
        sizes["adapter_int8_bytes"] = directory_bytes(int8_dir)

        report_stage = _StageReporter(settings, lineage["run_id"])
        report_stage("persona judge (trained once on the authored corpus, cached)")
        trained = load_or_train(profiles, settings.judge_dir)
        engine = build_engine(settings.model_copy(update={"quantization": "none"}), max_adapters=2)
        engine.load_adapter(CANDIDATE, bundle)
        if stable is not None:
            url, sha256 = stable
            engine.load_adapter(
                STABLE, fetch_directory(url, sha256=sha256, cache_dir=settings.adapter_cache_dir)
            )
        on_gpu = engine.device.type == "cuda"
        quantized = None
        if not on_gpu:  # the int8 base is a CPU serving option (bitsandbytes on CUDA)
            quantized = build_engine(
                settings.model_copy(update={"quantization": "int8", "device": "cpu"}),
                max_adapters=1,
            )
            quantized.load_adapter(CANDIDATE, int8_dir)
            sizes["base_fp32_bytes"] = engine.base_weight_bytes()
            sizes["base_int8_bytes"] = quantized.base_weight_bytes()
        result = evaluate_candidate(
            engine,
            profile,
            plan,
            Scorers(trained.classifier, ContentCheck()),
            quantized_engine=quantized,
            on_stage=report_stage,
        )
        gates = check_gates(result, settings.gates_for(persona), on_gpu=on_gpu)
        candidate = result.variants[CANDIDATE]
        versus = result.variants.get(STABLE)
        summary = (
            f"style accuracy {candidate.style_accuracy:.3f}, content "
            f"{candidate.content_preservation:.3f}"
            + (
                f" (stable: {versus.style_accuracy:.3f}, {versus.content_preservation:.3f})"
                if versus
                else ""
            )
            + f"; {sum(g.passed for g in gates)}/{len(gates)} gates passed"
        )
        report = {
            "persona": persona,
            "run_id": lineage["run_id"],
            "summary": summary,
            "classifier_heldout_accuracy": trained.heldout_accuracy,
            "classifier_heldout": trained.heldout,
            "evaluation": result.to_json(),
            "gates": [asdict(g) for g in gates],
            "sizes": sizes,
            "training": job.training,
            "lineage": lineage,
        }
        write_report(report, bundle / REPORT_DIR)
        published = publish_directory(
            bundle, root_url=settings.resolved_artifact_url, persona=persona
        )
    return published, report
