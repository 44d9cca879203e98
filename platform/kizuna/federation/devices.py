"""Simulated fleet devices: data dirs with their own interaction stores.

Each simulated device has used several personas: its requests are neutral corpus
sentences, the answers it kept are the ``rules`` teacher's rewrites at a few strengths
(what a user who accepted the persona's answers would hold), and about one answer in
eight was thumbed down (and is left out of local training).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from pathlib import Path

from kizuna.datasets.corpus import CORPUS_STRENGTHS, neutral_sentences
from kizuna.federation.manifest import DeviceManifest, device_store_url
from kizuna.personas.schema import PersonaProfile
from kizuna.store.db import open_store, transaction
from kizuna.store.interactions import InteractionRecord, log_interaction, set_feedback
from kizuna.teacher.base import StyleRequest
from kizuna.teacher.rules import rewrite


def simulate_devices(
    root: Path,
    *,
    count: int,
    profiles: Sequence[PersonaProfile],
    base_model: str,
    interactions: int = 48,
    seed: int = 0,
    keep_sent_updates: bool = False,
    strengths: Sequence[float] = CORPUS_STRENGTHS,
) -> list[Path]:
    """Create ``count`` device dirs ``root/device-000`` … with their own interactions."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not profiles:
        raise ValueError("at least one persona is needed")
    sentences = neutral_sentences("en")
    directories = []
    for index in range(count):
        directory = root / f"device-{index:03d}"
        rng = random.Random(f"{seed}:{index}")
        DeviceManifest(
            device_id=f"device-{index:03d}",
            base_model=base_model,
            keep_sent_updates=keep_sent_updates,
        ).write(directory)
        factory = open_store(device_store_url(directory))
        with transaction(factory) as session:
            for _ in range(interactions):
                profile = rng.choice(list(profiles))
                strength = rng.choice(strengths)
                text = rng.choice(sentences)
                record = InteractionRecord(
                    public_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                    request_text=text,
                    output_text=rewrite(StyleRequest(text, profile, strength)),
                    strength=strength,
                    adapter_versions={profile.id: 1},
                    token_entropies=[],
                    latency_ms=0.0,
                    persona=profile.id,
                    consent=False,
                    device_id=f"device-{index:03d}",
                )
                log_interaction(session, record=record)
                if rng.random() < 0.125:
                    set_feedback(session, public_id=record.public_id, thumbs_up=False)
        directories.append(directory)
    return directories
