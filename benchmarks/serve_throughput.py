"""Decode throughput of mixed-adapter batches, and what Ray Serve adds to latency.

All figures come from one run on the same model, prompts and token counts:

- engine, merged: one adapter merged into the weights, rows run without LoRA (the
  ceiling for any adapter path);
- engine, 8 adapters mixed: every row of a batch uses one of 8 distinct rank-16
  all-linear adapters, applied per row in one pass;
- naive PEFT: the same 8 adapters loaded in PEFT, ``set_adapter`` before each request,
  requests one at a time (PEFT cannot mix adapters inside a plain ``generate`` batch);
- Ray Serve p50 vs engine-alone p50 for one request with one adapter, and a streamed
  chat reply through Serve: when its first text arrives against when it is complete.

On CUDA, also batch-1 decode against the memory roofline: the time one decode step
would take if it only read the base weights once at the measured device-to-device copy
bandwidth, divided by the measured decode time per token (prefill excluded).

Speed does not depend on weight values, so adapters have random B. On CPU the embedded
SmolLM2-135M is used; ``--shape qwen2.5-0.5b --device cuda`` builds a Qwen2.5-0.5B-shaped
model with random weights for the GPU rows (``--tokenizer DIR`` names any directory with
the embedded model's tokenizer files, where the embedded model cannot be built).

    python benchmarks/serve_throughput.py [--batches 1 8 64] [--tokens 16] [--no-serve]
"""

from __future__ import annotations

import argparse
import gc
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import torch
from peft import PeftModel
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from common.summary import record
from kizuna.config import Settings
from kizuna.model.base import load_base_model, load_tokenizer
from kizuna.model.engine import Engine, EngineRequest
from kizuna.model.generation import SamplingParams, generate
from kizuna.model.lora import LoraShape, new_adapter
from kizuna.model.prompts import prompt_ids, transform_messages

ADAPTERS = 8
TEXTS = [
    "I can help you with this problem.",
    "The meeting has been moved to Thursday afternoon.",
    "Your report looks good, but the second table needs a title.",
    "Remember to drink some water.",
]
QWEN_05B = Qwen2Config(  # Qwen2.5-0.5B's shape: 24 layers, width 896, GQA 14/2, vocab 151,936
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
)


def _base(args: argparse.Namespace, path: str, device: torch.device) -> PreTrainedModel:
    if args.shape == "qwen2.5-0.5b":
        with device:  # allocate the random weights where they will run
            model: PreTrainedModel = AutoModelForCausalLM.from_config(
                QWEN_05B, dtype=torch.bfloat16
            )
        model.eval()
        return model
    return load_base_model(path, device=device)


def _adapter_dirs(base: PreTrainedModel, root: Path) -> list[Path]:
    dirs = []
    for index in range(ADAPTERS):
        model = new_adapter(base, LoraShape(rank=16, dropout=0.0), seed=index)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.01)
        model.save_pretrained(str(root / f"a{index}"))
        model.unload()
        dirs.append(root / f"a{index}")
    return dirs


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    """Measure and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=["embedded", "qwen2.5-0.5b"], default="embedded")
    parser.add_argument("--no-serve", action="store_true", help="skip the Ray Serve rows")
    parser.add_argument("--tokenizer", help="tokenizer directory for the qwen2.5-0.5b shape")
    parser.add_argument(
        "--eager", action="store_true", help="no captured CUDA graphs: the dynamic cache"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = Settings()
    if args.tokenizer and args.shape == "qwen2.5-0.5b":
        path = args.tokenizer
    else:
        from kizuna.model.embedded import build_embedded_model

        path = str(build_embedded_model(settings.embedded_model_dir).path)
    tokenizer = load_tokenizer(path)
    params = SamplingParams(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    prompts = [prompt_ids(tokenizer, transform_messages(text)) for text in TEXTS]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = _adapter_dirs(_base(args, path, device), Path(tmp))
        rows, roofline = _throughput(args, path, device, tokenizer, dirs, prompts, params)
        gc.collect()  # the throughput models are gone: latency is timed in a replica-like process
        serve = None
        if not args.no_serve:
            serve = _serve_vs_engine(settings, path, dirs[0], tokenizer, prompts[0], params)
    _print(rows, serve, roofline, args, device)


def _copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth, bytes read plus written per second."""
    source = torch.randn(1 << 28, device=device)  # 1 GiB: far past any cache
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        target.copy_(source)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return float(2 * source.numel() * source.element_size() * 10 / seconds)


def _decode_step_seconds(engine: Engine, prompt: list[int], device: torch.device) -> float:
    """Seconds per decoded token at batch 1, prefill excluded: the difference between a
    long and a short generation over the difference in tokens."""

    def run(tokens: int) -> float:
        params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens)
        return _seconds(partial(engine.generate, [EngineRequest(prompt, params=params)]), device)

    short, long = 8, 136
    return (run(long) - run(short)) / (long - short)


@dataclass(frozen=True)
class Roofline:
    """Batch-1 decode of the merged engine against the weights-read floor."""

    weight_bytes: int
    bandwidth: float
    step_s: float

    @property
    def floor_s(self) -> float:
        """Seconds to read the weights once."""
        return self.weight_bytes / self.bandwidth

    @property
    def fraction(self) -> float:
        """The floor over the measured step: 1.0 is the roofline."""
        return self.floor_s / self.step_s


def _throughput(
    args: argparse.Namespace,
    path: str,
    device: torch.device,
    tokenizer: PreTrainedTokenizerBase,
    dirs: list[Path],
    prompts: list[list[int]],
    params: SamplingParams,
) -> tuple[list[tuple[str, int, float]], Roofline | None]:
    """Tokens/s of the merged, mixed and naive-PEFT variants at every batch size, and on
    CUDA the merged engine's batch-1 decode against the memory roofline."""
    peft = PeftModel.from_pretrained(_base(args, path, device), str(dirs[0]), adapter_name="a0")
    for index, directory in enumerate(dirs[1:], start=1):
        peft.load_adapter(str(directory), adapter_name=f"a{index}")
    merged_base = PeftModel.from_pretrained(_base(args, path, device), str(dirs[0]))
    static = False if args.eager else None
    merged = Engine(merged_base.merge_and_unload(), tokenizer, static_decode=static)
    mixed = Engine(
        _base(args, path, device), tokenizer, max_adapters=ADAPTERS, static_decode=static
    )
    for index, directory in enumerate(dirs):
        mixed.load_adapter(f"a{index}", directory)
    rows: list[tuple[str, int, float]] = []
    for batch in args.batches:
        chosen = [prompts[i % len(prompts)] for i in range(batch)]
        plain = [EngineRequest(prompt=p, params=params) for p in chosen]
        routed = [
            EngineRequest(prompt=p, mix={f"a{i % ADAPTERS}": 1.0}, params=params)
            for i, p in enumerate(chosen)
        ]

        def naive(chosen: list[list[int]] = chosen) -> None:
            for i, prompt in enumerate(chosen):
                peft.set_adapter(f"a{i % ADAPTERS}")
                generate(peft, tokenizer, prompt, params)

        runs: list[tuple[str, Callable[[], object]]] = [
            ("engine, 1 adapter merged", partial(merged.generate, plain)),
            (f"engine, {ADAPTERS} adapters mixed", partial(mixed.generate, routed)),
            ("naive PEFT, set_adapter per request", naive),
        ]
        for name, run in runs:
            rows.append((name, batch, batch * args.tokens / _seconds(run, device)))
    roofline = None
    if device.type == "cuda":
        roofline = Roofline(
            weight_bytes=merged.base_weight_bytes(),
            bandwidth=_copy_bandwidth(device),
            step_s=_decode_step_seconds(merged, prompts[0], device),
        )
    return rows, roofline


@dataclass(frozen=True)
class ServeTimings:
    """Medians, in seconds, of one request at a time."""

    served: float  # a transform through Ray Serve's HTTP path
    alone: float  # the same request, engine alone
    first_text: float  # a streamed chat reply through Serve: its first text
    streamed: float  # ... and its end


def _streamed_chat(url: str, headers: dict[str, str], max_tokens: int) -> tuple[float, float]:
    """Seconds until a streamed chat reply's first text, and until its end."""
    body = {
        "model": "tsundere",
        "messages": [{"role": "user", "content": TEXTS[1]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and '"content"' in line:
                first = time.perf_counter() - started
    whole = time.perf_counter() - started
    return (whole if first is None else first), whole


def _serve_vs_engine(
    settings: Settings,
    path: str,
    adapter: Path,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    params: SamplingParams,
) -> ServeTimings:
    """p50 of one request through the engine alone, then through Ray Serve's HTTP path,
    then of a streamed chat reply through Serve.

    The engine is timed first: Ray's processes keep using CPU for a while after shutdown.
    """
    # Imported here: the throughput rows also run where Ray and the store are not installed.
    from kizuna.artifacts import publish_directory
    from kizuna.serve import launch
    from kizuna.store import adapters as adapter_store
    from kizuna.store.db import make_engine, session_factory, transaction, upgrade
    from kizuna.store.models import AdapterStatus

    engine = Engine(load_base_model(path, device=torch.device("cpu")), tokenizer)
    engine.load_adapter("a0", adapter)  # configured like a replica: one resident adapter
    # The API has no min_new_tokens, so both sides stop at EOS like a real request; greedy
    # decoding with the same adapter and prompt gives both the same reply.
    same_as_api = SamplingParams(max_new_tokens=params.max_new_tokens)
    request = EngineRequest(prompt=prompt, mix={"a0": 1.0}, params=same_as_api)
    engine.generate([request])
    alone = []
    for _ in range(8):
        started = time.perf_counter()
        engine.generate([request])
        alone.append(time.perf_counter() - started)
    del engine
    gc.collect()
    with tempfile.TemporaryDirectory() as data:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        served = settings.model_copy(
            update={
                "data_dir": Path(data),
                "base_model": path,
                "serve_port": port,
                "serve_batch_wait_ms": 0.0,
                "serve_cache_size": 0,
                "api_tokens": [SecretStr("bench")],
            }
        )
        database = make_engine(served.resolved_database_url)
        upgrade(database)
        artifact = publish_directory(
            adapter, root_url=served.resolved_artifact_url, persona="tsundere"
        )
        with transaction(session_factory(database)) as session:
            adapter_store.register_adapter(
                session,
                persona="tsundere",
                artifact_url=artifact.url,
                sha256=artifact.sha256,
                status=AdapterStatus.STABLE,
            )
        url = launch.start(served)
        try:
            body = {
                "text": TEXTS[0],
                "persona": "tsundere",
                "max_new_tokens": params.max_new_tokens,
            }
            headers = {"Authorization": "Bearer bench"}
            timings = []
            for _ in range(8):
                started = time.perf_counter()
                response = httpx.post(
                    f"{url}/v1/transform", json=body, headers=headers, timeout=300
                )
                timings.append(time.perf_counter() - started)
                response.raise_for_status()
            streams = [_streamed_chat(url, headers, params.max_new_tokens) for _ in range(8)]
        finally:
            launch.stop()
    return ServeTimings(
        served=statistics.median(timings[1:]),
        alone=statistics.median(alone),
        first_text=statistics.median(first for first, _ in streams[1:]),
        streamed=statistics.median(whole for _, whole in streams[1:]),
    )


def _print(
    rows: list[tuple[str, int, float]],
    serve: ServeTimings | None,
    roofline: Roofline | None,
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    merged = {batch: tps for name, batch, tps in rows if name.startswith("engine, 1")}
    naive = {batch: tps for name, batch, tps in rows if name.startswith("naive")}
    table = Table(
        title=f"Decode throughput, {args.tokens} new tokens/row, {args.shape} on {device}"
        + (", eager" if args.eager else "")
    )
    for column in ("variant", "batch", "tokens/s", "÷ merged", "÷ naive PEFT"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, batch, tps in rows:
        table.add_row(
            name,
            str(batch),
            f"{tps:.1f}",
            f"{tps / merged[batch]:.2f}",
            f"{tps / naive[batch]:.2f}",
        )
        figure = f"tokens/s, {name}, batch {batch}"
        record("serve throughput", figure, tps / merged[batch], "one merged adapter")
        record("serve throughput", figure, tps / naive[batch], "naive PEFT switching")
    if serve is not None:
        served, alone = serve.served, serve.alone
        table.add_row("Ray Serve p50 (1 request) ms", "1", f"{served * 1000:.0f}", "", "")
        table.add_row("engine alone p50 ms", "1", f"{alone * 1000:.0f}", "", "")
        table.add_row("Serve ÷ engine p50", "1", f"{served / alone:.2f}", "", "")
        record("serve throughput", "p50 through Ray Serve", served / alone, "engine alone p50")
        first, whole = serve.first_text, serve.streamed
        table.add_row("streamed chat: first text p50 ms", "1", f"{first * 1000:.0f}", "", "")
        table.add_row("streamed chat: whole reply p50 ms", "1", f"{whole * 1000:.0f}", "", "")
        table.add_row("first text ÷ whole reply", "1", f"{first / whole:.2f}", "", "")
        record("serve throughput", "streamed chat: first text", first / whole, "whole reply")
    if roofline is not None:
        gib = roofline.weight_bytes / 2**30
        table.add_row(
            f"batch-1 decode ms/token ({gib:.2f} GiB weights)",
            "1",
            f"{roofline.step_s * 1000:.2f}",
            "",
            "",
        )
        table.add_row(
            f"roofline ms/token ({roofline.bandwidth / 1e12:.2f} TB/s copy)",
            "1",
            f"{roofline.floor_s * 1000:.2f}",
            "",
            "",
        )
        table.add_row("batch-1 decode ÷ roofline", "1", f"{roofline.fraction:.2f}", "", "")
        record(
            "serve throughput",
            "batch-1 decode vs memory roofline",
            roofline.fraction,
            "weights bytes ÷ copy bandwidth",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
