"""CPU latency of one style transfer (30 new tokens) on the embedded SmolLM2-135M model.

Compares, in one run on the same inputs: the multi-adapter engine that ``kizuna
transform`` and serving use (per-row gathered LoRA, strength per request), HF
``generate`` on a PEFT-wrapped model (unmerged adapter), the adapter merged into the
weights (the floor for any adapter path), and the bare base model. Speed does not
depend on the adapter's values, so a rank-16 all-linear adapter with random B stands in
for a trained one.

    python benchmarks/transform_latency.py [--repeats 7] [--tokens 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.summary import record
from kizuna.config import Settings
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.embedded import build_embedded_model
from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.generation import SamplingParams, generate
from kizuna.model.lora import LoraShape, new_adapter, set_strength
from kizuna.model.prompts import prompt_ids, transform_messages

TEXT = "I can help you with this problem, and I will send you the answer tomorrow morning."


def _timings(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm-up: allocator, kernels, caches
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    """Measure every variant and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=30)
    options = parser.parse_args()
    torch.manual_seed(0)
    settings = Settings()
    path = str(build_embedded_model(settings.embedded_model_dir).path)
    tokenizer = load_tokenizer(path)
    prompt = prompt_ids(tokenizer, transform_messages(TEXT))
    params = SamplingParams(max_new_tokens=options.tokens, min_new_tokens=options.tokens)
    base = load_base_model(path, device=torch.device("cpu"))

    results = {
        "base model, no adapter": _timings(
            lambda: generate(base, tokenizer, prompt, params), options.repeats
        )
    }
    adapted = new_adapter(base, LoraShape())
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.01)
    set_strength(adapted, adapter="default", strength=0.8)
    results["HF generate, PEFT adapter unmerged"] = _timings(
        lambda: generate(adapted, tokenizer, prompt, params), options.repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        adapted.save_pretrained(tmp)
        merged = adapted.merge_and_unload()
        results["HF generate, adapter merged into weights"] = _timings(
            lambda: generate(merged, tokenizer, prompt, params), options.repeats
        )
        engine = Engine(load_base_model(path, device=torch.device("cpu")), tokenizer)
        engine.load_adapter("persona", Path(tmp))
    request = EngineRequest(prompt=prompt, mix={"persona": 1.0}, strength=0.8, params=params)
    results["Kizuna engine, strength 0.8 (kizuna transform)"] = _timings(
        lambda: engine.generate([request]), options.repeats
    )

    reference = statistics.median(results["base model, no adapter"])
    table = Table(
        title=f"One transform, {options.tokens} new tokens, prompt {len(prompt)} tokens, "
        f"{torch.get_num_threads()} CPU threads, fp32, {options.repeats} runs"
    )
    for column in ("variant", "p50 ms", "max ms", "tokens/s", "p50 ÷ base"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, samples in results.items():
        p50 = statistics.median(samples)
        table.add_row(
            variant,
            f"{p50:.0f}",
            f"{max(samples):.0f}",
            f"{options.tokens / p50 * 1000:.1f}",
            f"{p50 / reference:.2f}",
        )
        record("transform latency", f"p50, {variant}", p50 / reference, "base model p50")
    Console().print(table)


if __name__ == "__main__":
    main()
