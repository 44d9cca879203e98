"""Re-distill one persona's adapter into a new candidate version.

    python -m kizuna_jobs.retrain --config retrain.yaml   # also the KubeRay RayJob entrypoint
    kizuna retrain --persona tsundere                     # writes a config and runs this

1. **Data**: the train split of the named dataset versions (default: the persona's latest
   relabelled data, then the rules corpus), rows of this persona only.
2. **Train** with Ray Train's ``TorchTrainer`` on N workers, through DeepSpeed (ZeRO-2 by
   default; gloo on CPU, NCCL on GPUs) or plain DDP. Loss: α·CE on the teacher's targets
   + (1−α)·T²·KL to the teacher's logits when the teacher gives logits (``prompted``,
   ``hf``), CE alone otherwise. Warm start from the stable or the latest federated
   adapter. Every ``checkpoint_every`` steps all workers write a Ray Train checkpoint;
   a killed worker restarts the group from the last one (``FailureConfig``). Rank 0
   writes progress, loss and tokens/s to the run in the store as it goes.
3. **Quantize, evaluate, publish** in a Ray task: an int8 variant, the evaluation against
   the stable adapter with its gates, a JSON + HTML report, all in one content-addressed
   artifact.
4. **Register** a ``candidate`` version with its sha256, metrics and lineage.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import ray
import ray.train
import ray.train.torch
import torch
import yaml
from peft import PeftModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from kizuna.artifacts import PublishedArtifact, fetch_directory
from kizuna.config import Settings
from kizuna.datasets.persona_corpus import AUTHORED_DATASET
from kizuna.model.distill import DistillationWeights, distillation_loss
from kizuna.model.finetune import (
    IGNORE_INDEX,
    Encoded,
    Pair,
    collate,
    encode_pair,
    labelled_logits,
    strength_batches,
    warmup_linear_decay,
)
from kizuna.model.lora import load_adapter, set_strength
from kizuna.model.quantize import load_lora_tensors
from kizuna.personas import load_profiles
from kizuna.personas.loader import unknown_persona
from kizuna.personas.schema import PersonaProfile
from kizuna.store import adapters as adapter_store
from kizuna.store import datasets as dataset_store
from kizuna.store import runs as run_store
from kizuna.store.db import open_store, transaction
from kizuna.store.models import Adapter, AdapterStatus, Dataset, Run, RunKind, RunPhase
from kizuna.teacher.base import LogitTeacher, StyleRequest
from kizuna.teacher.registry import LOGIT_TEACHERS, build_teacher
from kizuna.version import code_version

console = Console(stderr=True)
ADAPTER_NAME = "default"
#: Share of the run's progress bar that training takes; evaluation is the rest.
TRAINING_SHARE = 0.8
_DEEPSPEED_TAG = "zero"
_STATE_FILE = "trainer_state.json"


class UserError(ValueError):
    """Bad configuration or missing inputs: reported as one line, exit status 2."""


# --- configuration -------------------------------------------------------------------


class TrainerConfig(BaseModel):
    """How the training is distributed."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    strategy: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: Literal[1, 2] = 2


class EvaluationConfig(BaseModel):
    """The held-out evaluation of the candidate."""

    model_config = ConfigDict(extra="forbid")

    per_language: int = Field(default=24, ge=1, description="Held-out inputs per language.")
    strength: float = Field(default=1.0, description="Headline strength (0.3, 0.6 or 1.0).")
    # Chinese takes ~2 tokens a character in SmolLM2's vocabulary: 40 cut outputs short.
    max_new_tokens: int = Field(default=80, ge=1)
    latency_samples: int = Field(default=8, ge=1)


class RetrainConfig(BaseModel):
    """One retrain job; the YAML/JSON file given to ``--config``."""

    model_config = ConfigDict(extra="forbid")

    persona: str
    job_name: str | None = Field(
        default=None,
        description="Set by a rollout (the RayJob's or the local job's name) so that it "
        "finds this run and the candidate it registered.",
    )
    datasets: list[str] = Field(
        default_factory=list,
        description="'name' (newest version) or 'name@version'; default: relabel-<persona>, "
        "relabel-all and authored (the authored corpus, replayed), those that exist.",
    )
    teacher: str | None = Field(
        default=None,
        description="Teacher of the KL term; default: the datasets' teacher when it gives logits.",
    )
    warm_start: Literal["stable", "federated"] = "stable"
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    steps: int = Field(default=48, ge=1)
    batch_size: int = Field(default=8, ge=1, description="Rows per worker per step.")
    learning_rate: float = Field(default=5e-4, gt=0)
    max_length: int = Field(default=192, ge=16)
    max_rows: int = Field(default=4000, ge=1, description="Training rows used at most.")
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)
    checkpoint_every: int = Field(default=8, ge=1)
    max_failures: int = Field(default=2, ge=0, description="Worker-group restarts allowed.")
    storage_path: str | None = Field(
        default=None,
        description="Where Ray Train keeps checkpoints: a path every worker can reach "
        "(NFS, or s3://… in a cluster); default <data_dir>/ray_results.",
    )
    seed: int = 0
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)


def load_config(path: Path) -> RetrainConfig:
    """The config in ``path`` (YAML or JSON); errors name the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str) -> RetrainConfig:
    """A config from YAML or JSON text; errors name ``source`` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {source}: {exc}") from exc
    try:
        return RetrainConfig.model_validate(data or {})
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"{source}: {fields}") from exc


# --- what the workers are given ------------------------------------------------------


class WorkerPlan(BaseModel):
    """Everything a training worker needs, resolved by the driver."""

    settings: dict[str, Any]
    persona: str
    rows: list[tuple[str, str, float]]
    warm_start_url: str
    warm_start_sha256: str
    logit_teacher: str | None
    strategy: Literal["deepspeed", "ddp"]
    zero_stage: int
    steps: int
    batch_size: int
    learning_rate: float
    max_length: int
    alpha: float
    temperature: float
    checkpoint_every: int
    seed: int
    run_id: int | None


@dataclass(frozen=True)
class DatasetUse:
    """A dataset version and how many of its rows the run trains on."""

    name: str
    version: int
    rows: int
    teacher: str | None


def _datasets(config: RetrainConfig, session: Session) -> list[Dataset]:
    """The configured dataset versions, or the default ones that exist, in order."""
    if config.datasets:
        chosen: list[Dataset] = []
        for ref in config.datasets:
            name, _, version = ref.partition("@")
            if version and not version.isdigit():
                raise UserError(f"dataset {ref!r}: the version after '@' must be a number")
            try:
                chosen.append(
                    dataset_store.get_dataset(
                        session, name=name, version=int(version) if version else None
                    )
                )
            except LookupError as exc:
                raise UserError(str(exc)) from exc
        return chosen
    defaults = [f"relabel-{config.persona}", "relabel-all", AUTHORED_DATASET]
    found: list[Dataset] = []
    for name in defaults:
        try:
            found.append(dataset_store.get_dataset(session, name=name))
        except LookupError:
            continue
    if not found:
        raise UserError(
            f"no training data for {config.persona!r}: none of {', '.join(defaults)} exists; "
            "run `kizuna bootstrap` or `kizuna relabel` first"
        )
    return found


def training_rows(session: Session, config: RetrainConfig) -> tuple[list[Pair], list[DatasetUse]]:
    """The persona's train-split rows, earlier datasets first, at most ``max_rows``."""
    pairs: list[Pair] = []
    uses: list[DatasetUse] = []
    rng = random.Random(config.seed)
    for dataset in _datasets(config, session):
        rows = [
            Pair(row.input, row.target, float(row.row_metadata.get("strength", 1.0)))
            for row in dataset_store.dataset_rows(session, dataset_id=dataset.id, split="train")
            if row.row_metadata.get("personality", dataset.persona) == config.persona
        ]
        room = config.max_rows - len(pairs)
        chosen = rng.sample(rows, room) if len(rows) > room else rows
        pairs += chosen
        teacher = dataset.provenance.get("teacher", {}).get("name")
        uses.append(DatasetUse(dataset.name, dataset.version, len(chosen), teacher))
    if not pairs:
        raise UserError(f"the datasets {[u.name for u in uses]} hold no rows of {config.persona!r}")
    return pairs, uses


def logit_teacher_for(config: RetrainConfig, uses: Sequence[DatasetUse]) -> str | None:
    """The teacher of the KL term: the configured one, else the datasets' own teacher
    when all rows come from one teacher that gives logits; None means CE alone."""
    if config.teacher is not None:
        if config.teacher not in LOGIT_TEACHERS:
            raise UserError(
                f"teacher {config.teacher!r} gives no logits; the KL term needs one of "
                f"{sorted(LOGIT_TEACHERS)} (leave it unset for CE on the targets alone)"
            )
        return config.teacher
    teachers = {use.teacher for use in uses if use.rows}
    only = next(iter(teachers)) if len(teachers) == 1 else None
    return only if only in LOGIT_TEACHERS else None


def warm_start_adapter(session: Session, config: RetrainConfig) -> Adapter:
    """The adapter training starts from: the stable one, or the newest federated one."""
    if config.warm_start == "stable":
        try:
            return adapter_store.stable_adapter(session, persona=config.persona)
        except adapter_store.AdapterNotFoundError as exc:
            raise UserError(str(exc)) from exc
    federated = [
        adapter
        for adapter in adapter_store.list_adapters(session, persona=config.persona)
        if adapter.lineage.get("source") == "federated"
    ]
    if not federated:
        raise UserError(
            f"warm_start: federated, but {config.persona!r} has no federated adapter yet; "
            "run a federated round first or warm-start from stable"
        )
    return federated[-1]


# --- the training workers ------------------------------------------------------------


class _LabelledLogits(nn.Module):
    """The student's logits at labelled positions as a module, so DDP and DeepSpeed can
    wrap the exact computation the loss uses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return labelled_logits(self.model, batch)  # type: ignore[arg-type]


def deepspeed_config(plan: WorkerPlan, *, use_gpu: bool) -> dict[str, Any]:
    """DeepSpeed's config: ZeRO stage, clipping, bf16 on GPUs; the optimizer is torch's."""
    return {
        "train_micro_batch_size_per_gpu": plan.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": plan.zero_stage},
        # A torch AdamW is handed in: DeepSpeed's fused Adam needs a compiler toolchain
        # per device type, and ZeRO-2 partitions any optimizer's state the same way.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 1 << 30,
    }


class _Student:
    """The wrapped model, its optimiser step, and checkpoint save/restore, per strategy."""

    def __init__(self, model: PeftModel, plan: WorkerPlan) -> None:
        self.peft = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        self._trainable = trainable
        optimizer = torch.optim.AdamW(trainable, lr=plan.learning_rate)
        scheduler = warmup_linear_decay(optimizer, steps=plan.steps)
        module = _LabelledLogits(model)
        if plan.strategy == "deepspeed":
            import deepspeed

            use_gpu = ray.train.torch.get_device().type == "cuda"
            engine, _, _, _ = deepspeed.initialize(
                model=module,
                model_parameters=trainable,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=deepspeed_config(plan, use_gpu=use_gpu),
            )
            self.forward: nn.Module = engine
            self._engine = engine
        else:
            self.forward = ray.train.torch.prepare_model(module)
            self._engine = None
        self._optimizer, self._scheduler = optimizer, scheduler

    def step(self, loss: torch.Tensor) -> None:
        if self._engine is not None:
            self._engine.backward(loss)
            self._engine.step()
            return
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._trainable, 1.0)
        self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)

    def save(self, directory: Path, *, step: int, rank: int) -> None:
        if self._engine is not None:  # every rank writes its ZeRO partition
            self._engine.save_checkpoint(
                str(directory), tag=_DEEPSPEED_TAG, exclude_frozen_parameters=True
            )
        if rank == 0:
            self.peft.save_pretrained(str(directory / "adapter"), safe_serialization=True)
            if self._engine is None:
                torch.save(
                    {
                        "optimizer": self._optimizer.state_dict(),
                        "scheduler": self._scheduler.state_dict(),
                    },
                    directory / "optimizer.pt",
                )
            (directory / _STATE_FILE).write_text(json.dumps({"step": step}))

    def restore(self, directory: Path) -> int:
        if self._engine is not None:
            self._engine.load_checkpoint(
                str(directory), tag=_DEEPSPEED_TAG, load_module_strict=False
            )
        else:
            from peft import set_peft_model_state_dict

            weights = load_lora_tensors(directory / "adapter")
            set_peft_model_state_dict(self.peft, weights, adapter_name=ADAPTER_NAME)
            state = torch.load(directory / "optimizer.pt", weights_only=True)
            self._optimizer.load_state_dict(state["optimizer"])
            self._scheduler.load_state_dict(state["scheduler"])
        step: int = json.loads((directory / _STATE_FILE).read_text())["step"]
        return step


class _StoreProgress:
    """Rank 0's progress reports to the run (no-op without a run)."""

    def __init__(self, settings: Settings, run_id: int | None) -> None:
        self._run_id = run_id
        self._sessions = open_store(settings.resolved_database_url) if run_id else None
        self._history: list[dict[str, float]] = []

    def started(self, start_step: int, steps: int) -> None:
        if self._sessions is None or self._run_id is None:
            return
        with transaction(self._sessions) as session:
            run = session.get(Run, self._run_id)
            if run is None:
                raise LookupError(f"run {self._run_id} is gone from the store")
            self._history = [h for h in run.metrics.get("history", []) if h["step"] <= start_step]
            attempts = [*run.metrics.get("attempts", []), {"start_step": start_step}]
            run_store.update_run(
                session,
                run_id=self._run_id,
                message=f"training from step {start_step} of {steps}",
                metrics={"attempts": attempts},
            )

    def step(self, step: int, steps: int, loss: float, tokens_per_s: float) -> None:
        if self._sessions is None or self._run_id is None:
            return
        self._history.append(
            {"step": step, "loss": round(loss, 5), "tokens_per_s": round(tokens_per_s, 1)}
        )
        with transaction(self._sessions) as session:
            run_store.update_run(
                session,
                run_id=self._run_id,
                progress=TRAINING_SHARE * step / steps,
                message=f"step {step}/{steps} · loss {loss:.3f} · {tokens_per_s:.0f} tokens/s",
                metrics={
                    "step": step,
                    "loss": loss,
                    "tokens_per_s": tokens_per_s,
                    "history": self._history,
                },
            )


def _teacher_logits(
    teacher: LogitTeacher | None,
    persona: PersonaProfile,
    batch: Sequence[Encoded],
    sources: dict[int, Pair],
    labels: torch.Tensor,
) -> torch.Tensor | None:
    """The teacher's logits at the batch's labelled positions, row by row."""
    if teacher is None:
        return None
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
    pieces = []
    for item, count in zip(batch, counts, strict=True):
        pair = sources[id(item)]
        logits = teacher.target_logits(
            StyleRequest(pair.input, persona, pair.strength), pair.target
        )
        pieces.append(logits[:count])
    return torch.cat(pieces).to(labels.device)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: warm start, resume from a checkpoint if any, train, report."""
    from kizuna.model.base import load_base_model, load_tokenizer

    plan = WorkerPlan.model_validate(loop_config)
    settings = Settings(**plan.settings)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(plan.seed + rank)
    base_path = settings.resolved_base_model
    tokenizer = load_tokenizer(base_path)
    warm_dir = fetch_directory(
        plan.warm_start_url, sha256=plan.warm_start_sha256, cache_dir=settings.adapter_cache_dir
    )
    model = load_adapter(
        load_base_model(base_path, device=device), warm_dir, name=ADAPTER_NAME, trainable=True
    )
    teacher = None
    if plan.logit_teacher is not None:
        built = build_teacher(plan.logit_teacher, settings)
        teacher = built if isinstance(built, LogitTeacher) else None
    persona = load_profiles(settings.resolved_personas_dir)[plan.persona]

    pairs = [Pair(*row) for row in plan.rows][rank::world]
    encoded = [encode_pair(tokenizer, pair, max_length=plan.max_length) for pair in pairs]
    sources = {id(item): pair for item, pair in zip(encoded, pairs, strict=True)}
    batches = strength_batches(encoded, batch_size=plan.batch_size, seed=plan.seed + rank)
    student = _Student(model, plan)
    weights = DistillationWeights(alpha=plan.alpha, temperature=plan.temperature)
    progress = _StoreProgress(settings, plan.run_id if rank == 0 else None)

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_step = student.restore(Path(directory))
    for _ in range(start_step):  # the same batch order as an uninterrupted run
        next(batches)
    progress.started(start_step, plan.steps)

    model.train()
    loop_started, loop_tokens = time.perf_counter(), 0.0
    for step in range(start_step + 1, plan.steps + 1):
        started = time.perf_counter()
        batch = next(batches)
        set_strength(model, adapter=ADAPTER_NAME, strength=batch[0].strength)
        tensors = {
            k: v.to(device) for k, v in collate(batch, pad_id=tokenizer.pad_token_id).items()
        }
        logits, labels = student.forward(**tensors)
        with torch.no_grad():
            target = _teacher_logits(teacher, persona, batch, sources, tensors["labels"])
        loss = distillation_loss(logits, labels, target, weights)
        student.step(loss)
        tokens = torch.tensor([float(tensors["attention_mask"].sum())], device=device)
        torch.distributed.all_reduce(tokens)  # every worker's tokens: the job's throughput
        loop_tokens += float(tokens)
        progress.step(
            step, plan.steps, float(loss.detach()), float(tokens) / (time.perf_counter() - started)
        )
        if step % plan.checkpoint_every == 0 or step == plan.steps:
            with tempfile.TemporaryDirectory() as scratch:
                student.save(Path(scratch), step=step, rank=rank)
                metrics = {
                    "step": step,
                    "loss": float(loss.detach()),
                    # Since this attempt started, checkpoint writing included.
                    "tokens_per_s": loop_tokens / (time.perf_counter() - loop_started),
                }
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(scratch))


# --- the driver ----------------------------------------------------------------------


def prepare_deepspeed_ops() -> None:
    """Build DeepSpeed's CPU communication op once, before the workers need it.

    The op is JIT-compiled into torch's extension cache (~45 s the first time). A build
    that was killed leaves its lock file behind, and every later build waits on it
    forever; a lock older than any real build is removed here instead.
    """
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        return
    for lock in Path(get_default_build_root()).glob("*/deepspeed_*/lock"):
        if time.time() - lock.stat().st_mtime > 600:
            console.print(f"removing a stale DeepSpeed build lock: {lock}")
            lock.unlink(missing_ok=True)
    with console.status("building DeepSpeed's CPU communication op (once)…"):
        accelerator.create_op_builder("ShareMemCommBuilder").load()


def worker_plan(
    config: RetrainConfig,
    settings: Settings,
    pairs: Sequence[Pair],
    *,
    warm: Adapter,
    logit_teacher: str | None,
    run_id: int | None,
) -> WorkerPlan:
    """What every training worker is given for this config."""
    return WorkerPlan(
        settings=settings.model_dump(),
        persona=config.persona,
        rows=[(p.input, p.target, p.strength) for p in pairs],
        warm_start_url=warm.artifact_url,
        warm_start_sha256=warm.sha256,
        logit_teacher=logit_teacher,
        strategy=config.trainer.strategy,
        zero_stage=config.trainer.zero_stage,
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        alpha=config.alpha,
        temperature=config.temperature,
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        run_id=run_id,
    )


@dataclass(frozen=True)
class RetrainOutcome:
    """What a finished retrain produced."""

    run_id: int
    persona: str
    version: int
    artifact_url: str
    report: dict[str, Any]


def fit(plan: WorkerPlan, config: RetrainConfig, settings: Settings, name: str) -> ray.train.Result:
    """Run the workers under Ray Train; the result holds the last checkpoint and metrics."""
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.model_dump(),
        torch_config=TorchConfig(backend="nccl" if config.trainer.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.trainer.workers,
            use_gpu=config.trainer.use_gpu,
            resources_per_worker={"CPU": config.trainer.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=config.storage_path or str((settings.data_dir / "ray_results").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


@contextmanager
def _show_progress(sessions: sessionmaker[Session], run_id: int) -> Iterator[None]:
    """A progress bar fed from the run in the store, as the dashboard sees it."""
    stop = threading.Event()
    with Progress(
        TextColumn("[bold]retrain"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    ) as bar:
        task = bar.add_task("starting Ray Train…", total=1.0)

        def poll() -> None:
            while not stop.wait(1.0):
                with sessions() as session:
                    run = session.get(Run, run_id)
                    if run is not None:
                        bar.update(task, completed=run.progress, description=run.message)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def run_retrain(config: RetrainConfig, settings: Settings) -> RetrainOutcome:
    """Train, evaluate, publish and register one candidate; the run records each stage."""
    profiles = load_profiles(settings.resolved_personas_dir)
    if config.persona not in profiles:
        raise UserError(str(unknown_persona(config.persona, profiles)))
    sessions = open_store(settings.resolved_database_url)
    with transaction(sessions) as session:
        warm = warm_start_adapter(session, config)
        # The candidate is compared with what serves now, whatever it was trained from.
        current = adapter_store.adapter_with_status(
            session, persona=config.persona, status=AdapterStatus.STABLE
        )
        stable = (current.artifact_url, current.sha256) if current is not None else None
        pairs, uses = training_rows(session, config)
        run_id = run_store.create_run(
            session, kind=RunKind.RETRAIN, persona=config.persona, config=config.model_dump()
        ).id
        warm_ref: dict[str, Any] = {
            "source": config.warm_start,
            "version": warm.version,
            "sha256": warm.sha256,
            **{k: warm.lineage[k] for k in ("rounds", "epsilon", "delta") if k in warm.lineage},
        }
        base_sha256 = warm.lineage.get("base_sha256")
    logit_teacher = logit_teacher_for(config, uses)
    plan = worker_plan(
        config, settings, pairs, warm=warm, logit_teacher=logit_teacher, run_id=run_id
    )
    try:
        with transaction(sessions) as session:
            run_store.update_run(session, run_id=run_id, phase=RunPhase.RUNNING, message="starting")
        if config.trainer.strategy == "deepspeed":
            prepare_deepspeed_ops()
        if not ray.is_initialized():
            ray.init(logging_level=logging.WARNING, log_to_driver=False)
        with _show_progress(sessions, run_id):
            result = fit(plan, config, settings, name=f"retrain-{config.persona}-run{run_id}")
            if result.error is not None or result.checkpoint is None:
                raise RuntimeError(f"training failed: {result.error}")
            with transaction(sessions) as session:
                run = run_store.update_run(
                    session, run_id=run_id, message="quantizing and evaluating the candidate"
                )
                training = {k: run.metrics.get(k) for k in ("history", "attempts", "tokens_per_s")}
            lineage = {
                "source": "retrain",
                "run_id": run_id,
                "base_model": settings.base_model,
                "base_sha256": base_sha256,
                "datasets": [asdict(use) for use in uses],
                "teacher": {
                    "targets": sorted({u.teacher for u in uses if u.teacher}),
                    "logits": logit_teacher,
                    "distillation": "logit (α·CE + (1−α)·T²·KL)"
                    if logit_teacher
                    else "sequence-level (CE on targets)",
                    "alpha": config.alpha,
                    "temperature": config.temperature,
                },
                "warm_start": warm_ref,
                "trainer": {
                    **config.trainer.model_dump(),
                    "steps": config.steps,
                    "batch_size": config.batch_size,
                    "learning_rate": config.learning_rate,
                    "ray_checkpoint": result.checkpoint.path,
                },
                "quantization": {
                    "adapter": "int8 variant in int8/: symmetric, one scale per rank slice",
                    "base": "evaluated on CPU with dynamic int8 linear layers, per channel; "
                    "LM head and down_proj fp32",
                },
                "code_version": code_version(),
            }
            from kizuna_jobs.evaluate import EvaluationJob, evaluate_and_publish

            job = EvaluationJob(
                checkpoint=result.checkpoint,
                settings=settings.model_dump(),
                persona=config.persona,
                stable=stable,
                lineage=lineage,
                training=training,
                **config.evaluation.model_dump(),
            )
            # Training has finished: the evaluation may use the CPUs its workers held
            # (Ray sets the task's torch threads from num_cpus).
            cpus = config.trainer.workers * config.trainer.cpus_per_worker
            task = ray.remote(evaluate_and_publish).options(
                num_cpus=cpus, num_gpus=1 if config.trainer.use_gpu else 0
            )
            published, report = ray.get(task.remote(job))
        return _register(sessions, run_id, config.persona, published, report, lineage)
    except BaseException as exc:
        with transaction(sessions) as session:
            run_store.update_run(
                session, run_id=run_id, phase=RunPhase.FAILED, message=str(exc)[:2000]
            )
        raise


def _register(
    sessions: sessionmaker[Session],
    run_id: int,
    persona: str,
    published: PublishedArtifact,
    report: dict[str, Any],
    lineage: dict[str, Any],
) -> RetrainOutcome:
    candidate = report["evaluation"]["variants"]["candidate"]
    metrics = {
        **{
            key: candidate[key]
            for key in (
                "style_accuracy",
                "content_preservation",
                "distinct_2",
                "perplexity",
                "latency_p50_ms",
                "latency_p95_ms",
            )
        },
        "gates_passed": all(g["passed"] for g in report["gates"]),
        "gates": {g["name"]: g["passed"] for g in report["gates"]},
        "report": f"{published.url}/evaluation/report.html",
    }
    with transaction(sessions) as session:
        adapter = adapter_store.register_adapter(
            session,
            persona=persona,
            artifact_url=published.url,
            sha256=published.sha256,
            status=AdapterStatus.CANDIDATE,
            lineage=lineage,
            metrics=metrics,
        )
        run_store.update_run(
            session,
            run_id=run_id,
            phase=RunPhase.SUCCEEDED,
            progress=1.0,
            message=f"{persona} v{adapter.version} registered as candidate",
            metrics={"candidate_version": adapter.version, "gates_passed": metrics["gates_passed"]},
        )
        version = adapter.version
    return RetrainOutcome(run_id, persona, version, published.url, report)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m kizuna_jobs.retrain", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="A YAML or JSON RetrainConfig file.")
    source.add_argument(
        "--config-json", help="The RetrainConfig as JSON text (how a RayJob passes it)."
    )
    options = parser.parse_args(argv)
    try:
        config = (
            load_config(options.config)
            if options.config is not None
            else parse_config(options.config_json, source="--config-json")
        )
        outcome = run_retrain(config, Settings())
    except (UserError, LookupError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    gates = outcome.report["gates"]
    failed = [g["name"] for g in gates if not g["passed"]]
    Console().print(
        f"run {outcome.run_id}: {outcome.persona} v{outcome.version} registered as candidate; "
        f"gates {len(gates) - len(failed)}/{len(gates)} passed"
        + (f" (failed: {', '.join(failed)})" if failed else "")
    )
    Console().print(f"report: {outcome.artifact_url}/evaluation/report.html", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
