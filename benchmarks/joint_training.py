"""Six persona adapters trained together in one pass vs one after the other, same steps each.

Both arms train every persona for ``--steps`` steps of ``--batch`` rows of its authored
train split on the embedded SmolLM2-135M, at the same precision: one after the other
with PEFT (``train_lora``, what bootstrap did before), and together with
``train_jointly`` (each step stacks every persona's rows into one pass of the frozen
base, routed to their slots). Reported: training tokens/s of each arm and their ratio,
then each persona's style accuracy and content preservation at s = 1.0 on held-out
inputs for both arms (the joint arm must be no worse). The same tokens cost the same
matmul FLOPs on a CPU, so the ratio here measures what sharing saves beyond them (per
step overhead, GEMM shapes); on a GPU, where one persona's batch leaves the device idle,
the gain is the batch's width.

    python benchmarks/joint_training.py [--steps 8] [--batch 4] [--per-language 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.bootstrap import training_pairs
from kizuna.config import Settings
from kizuna.datasets.content import ContentCheck
from kizuna.datasets.persona_corpus import LANGUAGES, heldout_texts
from kizuna.evaluation.candidate import generate_transforms
from kizuna.evaluation.classifier import load_or_train
from kizuna.evaluation.metrics import content_preservation, style_accuracy
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.embedded import build_embedded_model
from kizuna.model.engine import Engine
from kizuna.model.finetune import FinetuneArgs, StepReport, train_lora
from kizuna.model.joint_finetune import train_jointly
from kizuna.model.lora import LoraShape, new_adapter
from kizuna.personas import load_profiles

CPU = torch.device("cpu")


class _Tokens:
    """Counts training tokens and seconds over steps, skipping each arm's first step."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self._seen = 0, 0.0, 0

    def __call__(self, step: StepReport) -> None:
        self._seen += 1
        if self._seen > 1:  # the first step pays allocator and kernel warm-up
            self.tokens += step.tokens
            self.seconds += step.seconds


def main() -> None:
    """Train both arms, score both, print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--per-language", type=int, default=16)
    options = parser.parse_args()
    console = Console()
    settings = Settings()
    path = str(build_embedded_model(settings.embedded_model_dir).path)
    tokenizer = load_tokenizer(path)
    profiles = load_profiles(settings.resolved_personas_dir)
    personas = sorted(profiles)
    pairs = {p: training_pairs(profiles[p]) for p in personas}
    args = FinetuneArgs(steps=options.steps, batch_size=options.batch)
    shape = LoraShape()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sequential = _Tokens()
        for persona in personas:
            console.print(f"one after the other: {persona}…")
            model = new_adapter(load_base_model(path, device=CPU), shape, seed=args.seed)
            train_lora(model, tokenizer, pairs[persona], args, on_step=sequential)
            model.save_pretrained(str(root / "sequential" / persona), safe_serialization=True)
        console.print("together…")
        joint = _Tokens()
        training = train_jointly(
            load_base_model(path, device=CPU), tokenizer, pairs, shape, args, on_step=joint
        )
        for persona in personas:
            training.save_adapter(persona, root / "joint" / persona)

        console.print("scoring both arms on held-out inputs…")
        engine = Engine(load_base_model(path, device=CPU), tokenizer, max_adapters=12)
        for arm in ("sequential", "joint"):
            for persona in personas:
                engine.load_adapter(f"{arm}/{persona}", root / arm / persona)
        judge = load_or_train(profiles, settings.judge_dir).classifier
        content = ContentCheck()
        inputs = [t for lang in LANGUAGES for t in heldout_texts(lang)[: options.per_language]]
        scores: dict[tuple[str, str], tuple[float, float]] = {}
        for arm in ("sequential", "joint"):
            for persona in personas:
                rows = [(f"{arm}/{persona}", text, 1.0) for text in inputs]
                outputs = [g.text for g in generate_transforms(engine, rows, 64)]
                scores[(arm, persona)] = (
                    style_accuracy(judge, outputs, persona),
                    content_preservation(content, inputs, outputs),
                )

    seq_rate = sequential.tokens / sequential.seconds
    joint_rate = joint.tokens / joint.seconds
    table = Table(
        title=f"six adapters, {options.steps} steps x {options.batch} rows each: training "
        f"tokens/s one after the other {seq_rate:.0f}, together {joint_rate:.0f} "
        f"(x{joint_rate / seq_rate:.2f}); held-out style / content at s=1 "
        f"({len(inputs)} inputs, en+zh)"
    )
    for column in ("persona", "style seq", "style joint", "content seq", "content joint"):
        table.add_column(column, justify="left" if column == "persona" else "right")
    for persona in personas:
        (s_style, s_content), (j_style, j_content) = (
            scores[("sequential", persona)],
            scores[("joint", persona)],
        )
        table.add_row(
            persona, f"{s_style:.2f}", f"{j_style:.2f}", f"{s_content:.2f}", f"{j_content:.2f}"
        )
    console.print(table)
    record("joint_training", "tokens/s together", joint_rate / seq_rate, "one after the other")


if __name__ == "__main__":
    main()
