"""What a device does in a round: train the persona's LoRA on its own interactions.

A device's data dir holds ``device.json`` (its id and base model) and its own SQLite
store of interactions; nothing in it leaves the device except the clipped LoRA update.
Training is the same ``train_lora`` every other adapter in Kizuna is trained with.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import get_peft_model_state_dict
from sqlalchemy import select

from kizuna.federation.config import Factors
from kizuna.federation.manifest import SENT_UPDATES_DIR, DeviceManifest, device_store_url
from kizuna.federation.updates import (
    AdapterLayout,
    Arrays,
    clipped,
    difference,
    l2_norm,
    save_adapter,
    save_arrays,
    trains,
)
from kizuna.model.base import load_base_model, load_tokenizer, resolve_device
from kizuna.model.finetune import FinetuneArgs, Pair, train_lora
from kizuna.model.lora import load_adapter
from kizuna.store.db import open_store
from kizuna.store.models import Interaction


@dataclass(frozen=True)
class RoundInstructions:
    """What the server asks of every device in one round (no data, only settings)."""

    persona: str
    run_id: int
    round: int
    steps: int
    batch_size: int
    learning_rate: float
    max_pairs: int
    clipping_norm: float
    seed: int
    names: list[str]
    #: The PEFT ``adapter_config.json`` of the adapter being improved.
    adapter_config: str
    #: Which LoRA factors are trained and sent (the rest stay frozen).
    factors: Factors

    @property
    def sent_names(self) -> list[str]:
        """The tensors a device's update holds, in layout order."""
        return [name for name in self.names if trains(name, self.factors)]

    def encode(self) -> str:
        """As one JSON string (Flower config values are scalars)."""
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: str) -> RoundInstructions:
        """Parse :meth:`encode`'s output."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class LocalUpdate:
    """A device's contribution: the clipped update and what it may say about itself."""

    update: Arrays
    examples: int
    loss: float
    norm_before_clip: float


def local_pairs(data_dir: Path, *, persona: str, limit: int) -> list[Pair]:
    """The device's newest interactions with ``persona`` that the user did not thumb down."""
    factory = open_store(device_store_url(data_dir))
    with factory() as session:
        rows = session.scalars(
            select(Interaction)
            .where(Interaction.persona == persona)
            .where((Interaction.feedback.is_(None)) | (Interaction.feedback > 0))
            .order_by(Interaction.id.desc())
            .limit(limit)
        ).all()
        return [Pair(r.request_text, r.output_text, r.strength) for r in rows]


def local_update(data_dir: Path, instructions: RoundInstructions, weights: Arrays) -> LocalUpdate:
    """Fine-tune ``weights`` on this device's data; return the update, clipped."""
    manifest = DeviceManifest.read(data_dir)
    pairs = local_pairs(data_dir, persona=instructions.persona, limit=instructions.max_pairs)
    if not pairs:
        raise LookupError(f"device {manifest.device_id} has no {instructions.persona} interactions")
    layout = AdapterLayout(
        names=tuple(instructions.names), shapes=tuple(tuple(w.shape) for w in weights)
    )
    device = resolve_device("auto")
    base = load_base_model(manifest.base_model, device=device, dtype=None)
    tokenizer = load_tokenizer(manifest.base_model)
    with tempfile.TemporaryDirectory(prefix="kizuna-round-") as tmp:
        adapter_dir = save_adapter(
            Path(tmp),
            adapter_config=instructions.adapter_config,
            names=layout.names,
            arrays=weights,
        )
        model = load_adapter(base, adapter_dir, name=instructions.persona, trainable=True)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not trains(name, instructions.factors):
            parameter.requires_grad_(False)
    args = FinetuneArgs(
        steps=instructions.steps,
        batch_size=instructions.batch_size,
        learning_rate=instructions.learning_rate,
        seed=instructions.seed + instructions.round,
    )
    losses = train_lora(model, tokenizer, pairs, args)
    sent = layout.sent(instructions.factors)
    trained = sent.arrays(get_peft_model_state_dict(model, adapter_name=instructions.persona))
    before = [
        w
        for name, w in zip(layout.names, weights, strict=True)
        if trains(name, instructions.factors)
    ]
    update = difference(trained, before)
    return LocalUpdate(
        update=clipped(update, instructions.clipping_norm),
        examples=len(pairs),
        loss=sum(losses) / len(losses),
        norm_before_clip=l2_norm(update),
    )


def keep_sent_update(data_dir: Path, instructions: RoundInstructions, update: Arrays) -> Path:
    """Write what left the device this round into its own data dir (for its owner's audit)."""
    name = f"run-{instructions.run_id}-round-{instructions.round}.safetensors"
    return save_arrays(data_dir / SENT_UPDATES_DIR / name, instructions.sent_names, update)
