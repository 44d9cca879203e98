"""Training throughput: the retrain job on Ray Train vs a plain single-process PEFT loop.

The same rows (the persona's rules-teacher pairs of the shipped corpus), the same
warm start (the persona's stable adapter), the same global batch and step count:

- plain PEFT: ``train_lora`` in this process (torch uses every core);
- Ray Train + DeepSpeed ZeRO-2 and Ray Train + DDP: the job's own training loop on
  N workers of ``batch / N`` rows each, one CPU (or GPU) per worker.

Tokens/s count every token of every batch (prompt and target) over the training loop;
start-up (Ray, worker group, model loading) is shown apart. Needs ``make demo``.

    KIZUNA_DATA_DIR=.data python benchmarks/retrain_throughput.py [--steps 12]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import ray
import torch
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.artifacts import fetch_directory
from kizuna.config import Settings
from kizuna.datasets.corpus import neutral_sentences, parallel_pairs
from kizuna.model.base import load_base_model, load_tokenizer, resolve_device
from kizuna.model.finetune import FinetuneArgs, Pair, StepReport, train_lora
from kizuna.model.lora import load_adapter
from kizuna.personas import load_profiles
from kizuna.store.adapters import stable_adapter
from kizuna.store.db import open_store
from kizuna.teacher.rules import RulesTeacher
from kizuna_jobs.retrain import RetrainConfig, fit, prepare_deepspeed_ops, worker_plan

console = Console(stderr=True)


def _pairs(settings: Settings, persona: str, rows: int) -> list[Pair]:
    profiles = load_profiles(settings.resolved_personas_dir)
    sentences = [*neutral_sentences("en")[: rows // 2], *neutral_sentences("zh")[: rows // 2]]
    styled = parallel_pairs(sentences, {persona: profiles[persona]}, RulesTeacher())
    return [Pair(p.input, p.target, p.strength) for p in styled][:rows]


def _plain_peft(
    settings: Settings, warm_dir: Path, pairs: list[Pair], steps: int, batch: int
) -> tuple[float, float]:
    started = time.perf_counter()
    base_path = settings.resolved_base_model
    device = resolve_device(settings.device)
    model = load_adapter(
        load_base_model(base_path, device=device), warm_dir, name="default", trainable=True
    )
    reports: list[StepReport] = []
    loop_started = time.perf_counter()
    train_lora(
        model,
        load_tokenizer(base_path),
        pairs,
        FinetuneArgs(steps=steps, batch_size=batch),
        on_step=reports.append,
    )
    loop_seconds = time.perf_counter() - loop_started
    return sum(r.tokens for r in reports) / loop_seconds, time.perf_counter() - started


def main() -> None:
    """Run each setup and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="tsundere")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8, help="global rows per step")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    options = parser.parse_args()
    settings = Settings()
    with open_store(settings.resolved_database_url)() as session:
        warm = stable_adapter(session, persona=options.persona)
    warm_dir = fetch_directory(
        warm.artifact_url, sha256=warm.sha256, cache_dir=settings.adapter_cache_dir
    )
    pairs = _pairs(settings, options.persona, options.rows)
    use_gpu = torch.cuda.is_available()

    results: dict[str, tuple[float, float]] = {}
    console.print(f"plain PEFT, {options.steps} steps of {options.batch} rows…")
    results["plain PEFT (1 process)"] = _plain_peft(
        settings, warm_dir, pairs, options.steps, options.batch
    )
    prepare_deepspeed_ops()
    ray.init(logging_level=logging.WARNING, log_to_driver=False)
    for strategy, label in (
        ("deepspeed", "Ray Train + DeepSpeed ZeRO-2"),
        ("ddp", "Ray Train + DDP"),
    ):
        console.print(f"{label}, {options.workers} workers…")
        config = RetrainConfig(
            persona=options.persona,
            steps=options.steps,
            batch_size=options.batch // options.workers,
            checkpoint_every=options.steps,
            trainer={"workers": options.workers, "strategy": strategy, "use_gpu": use_gpu},
        )
        plan = worker_plan(config, settings, pairs, warm=warm, logit_teacher=None, run_id=None)
        started = time.perf_counter()
        result = fit(plan, config, settings, name=f"throughput-{strategy}-{int(started)}")
        if result.error is not None or result.metrics is None:
            raise RuntimeError(f"{label} failed: {result.error}")
        results[label] = (result.metrics["tokens_per_s"], time.perf_counter() - started)
    ray.shutdown()

    device = "GPU" if use_gpu else f"CPU ({torch.get_num_threads()} threads)"
    table = Table(
        title=f"retrain throughput: {options.persona}, {options.steps} steps x "
        f"{options.batch} rows, SmolLM2-135M + LoRA r16, {device}"
    )
    for column in ("setup", "workers x rows", "tokens/s", "÷ plain PEFT", "wall s (incl. start)"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    reference = results["plain PEFT (1 process)"][0]
    for label, (tokens_per_s, wall) in results.items():
        shape = (
            f"1 x {options.batch}"
            if label.startswith("plain")
            else f"{options.workers} x {options.batch // options.workers}"
        )
        table.add_row(
            label, shape, f"{tokens_per_s:.0f}", f"{tokens_per_s / reference:.2f}", f"{wall:.0f}"
        )
        record("retrain throughput", f"tokens/s, {label}", tokens_per_s / reference, "plain PEFT")
    Console().print(table)


if __name__ == "__main__":
    main()
