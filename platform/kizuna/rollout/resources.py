"""The custom resources ``Personality`` and ``RetrainRun`` (group kizuna.ai, v1alpha1).

The pydantic models are the one source of truth: the operator validates bodies with
them, ``crds.py`` derives the CRDs' OpenAPI schemas from them, and the dashboard builds
resources with them. Field names are camelCase on the wire (see ``WireModel``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kizuna.rollout.spec import Decision, Gates, RolloutPolicy, RolloutSpec, WireModel

GROUP = "kizuna.ai"
VERSION = "v1alpha1"


class AdapterVersions(WireModel):
    """Which adapter versions serve the persona, as the registry should hold them."""

    stable: int | None = Field(default=None, ge=1, description="The stable version.")
    canary: int | None = Field(default=None, ge=1, description="A canary version, if any.")
    canary_weight: float = Field(
        default=0.0, ge=0, le=1, description="Share of the persona's traffic the canary gets."
    )


class PersonalitySpec(WireModel):
    """One persona: its profile, base model, serving versions, gates and rollout policy."""

    profile: str = Field(min_length=1, max_length=32, description="Persona profile id.")
    base_model: str = Field(min_length=1, description="Hugging Face id or path of the base.")
    adapters: AdapterVersions = Field(default_factory=AdapterVersions)
    gates: Gates = Field(default_factory=Gates)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)
    paused: bool = Field(default=False, description="Rollouts of this persona take no action.")


class DataSources(WireModel):
    """What a retrain learns from."""

    datasets: list[str] = Field(
        default_factory=list,
        description="Dataset versions ('name' or 'name@version'), e.g. the active-learning "
        "relabel; empty: the job's defaults.",
    )
    warm_start: Literal["stable", "federated"] = Field(
        default="stable", description="Start from the stable adapter or the newest federated one."
    )
    teacher: str | None = Field(default=None, description="Teacher of the KL term.")


class Trainer(WireModel):
    """Resources of the RayJob's workers."""

    workers: int = Field(default=2, ge=1, le=256)
    gpus_per_worker: int = Field(default=1, ge=0, le=8)
    cpus_per_worker: float = Field(default=4.0, gt=0)
    memory_per_worker: str = Field(default="16Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)?$")
    deepspeed_stage: Literal[0, 1, 2] = Field(
        default=2, description="ZeRO stage; 0 trains with plain DDP instead of DeepSpeed."
    )
    steps: int = Field(default=48, ge=1, description="Optimiser steps.")


class Quantization(WireModel):
    """The quantized variant published and evaluated with the candidate."""

    variant: Literal["int8"] = Field(default="int8", description="int8 adapter and CPU base.")


class RetrainRunSpec(WireModel):
    """Retrain a persona (or take an existing candidate) and roll the result out."""

    persona: str = Field(min_length=1, max_length=32)
    candidate: int | None = Field(
        default=None, ge=1, description="Roll out this registered candidate; skip training."
    )
    data_sources: DataSources = Field(default_factory=DataSources)
    trainer: Trainer = Field(default_factory=Trainer)
    quantization: Quantization = Field(default_factory=Quantization)
    paused: bool = False
    decision: Decision | None = Field(
        default=None, description="Decide a running canary by hand: promote or rollback."
    )

    def job_config(self) -> dict[str, Any]:
        """The retrain job's config fields this spec sets."""
        config: dict[str, Any] = {
            "steps": self.trainer.steps,
            "warm_start": self.data_sources.warm_start,
            "trainer": {
                "workers": self.trainer.workers,
                "use_gpu": self.trainer.gpus_per_worker > 0,
                "cpus_per_worker": self.trainer.cpus_per_worker,
                "strategy": "deepspeed" if self.trainer.deepspeed_stage else "ddp",
                "zero_stage": self.trainer.deepspeed_stage or 2,
            },
        }
        if self.data_sources.datasets:
            config["datasets"] = self.data_sources.datasets
        if self.data_sources.teacher:
            config["teacher"] = self.data_sources.teacher
        return config

    def rollout(self, name: str, personality: PersonalitySpec) -> RolloutSpec:
        """The rollout this run asks for, with the persona's gates and policy."""
        return RolloutSpec(
            name=name,
            persona=self.persona,
            candidate=self.candidate,
            retrain=self.job_config(),
            gates=personality.gates,
            policy=personality.rollout,
            paused=self.paused or personality.paused,
            decision=self.decision,
        )


class Condition(WireModel):
    """A Kubernetes-style condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class PersonalityStatus(WireModel):
    """What the registry serves for the persona."""

    stable: int | None = None
    canary: int | None = None
    canary_weight: float = 0.0
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class RetrainRunStatus(WireModel):
    """The run's rollout record (see ``RolloutState``) plus what kubectl shows."""

    phase: str = "Pending"
    ray_job: str | None = None
    candidate_version: int | None = None
    baseline: int | None = None
    step: int | None = None
    canary_weight: float = 0.0
    step_started_at: str | None = None
    message: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


PRINTER_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "Personality": [
        ("Stable", "integer", ".status.stable"),
        ("Canary", "integer", ".status.canary"),
        ("Weight", "number", ".status.canaryWeight"),
    ],
    "RetrainRun": [
        ("Persona", "string", ".spec.persona"),
        ("Phase", "string", ".status.phase"),
        ("Candidate", "integer", ".status.candidateVersion"),
        ("Weight", "number", ".status.canaryWeight"),
        ("RayJob", "string", ".status.rayJob"),
    ],
}
