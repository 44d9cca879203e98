"""Logged interactions: what was asked, what each adapter answered, how sure it was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kizuna.store.models import DatasetRow, Interaction, JsonDict, LabellingPick


@dataclass(frozen=True, kw_only=True)
class InteractionRecord:
    """Everything the serving path knows about one answered request."""

    public_id: str
    request_text: str
    output_text: str
    strength: float
    adapter_versions: dict[str, int]
    token_entropies: list[float]
    latency_ms: float
    persona: str | None = None
    mix: dict[str, float] | None = None
    consent: bool = False
    device_id: str | None = None
    #: Who the client says the end user is (OpenAI's ``user``), for abuse tracing.
    end_user: str | None = None
    #: Top-1 minus top-2 probability per token; empty for records written before margins.
    token_margins: list[float] = field(default_factory=list)
    entropy_mean: float = field(init=False)
    entropy_max: float = field(init=False)
    margin_mean: float | None = field(init=False)

    def __post_init__(self) -> None:
        entropies, margins = self.token_entropies, self.token_margins
        object.__setattr__(
            self, "entropy_mean", sum(entropies) / len(entropies) if entropies else 0.0
        )
        object.__setattr__(self, "entropy_max", max(entropies, default=0.0))
        object.__setattr__(self, "margin_mean", sum(margins) / len(margins) if margins else None)


def log_interaction(session: Session, *, record: InteractionRecord) -> Interaction:
    """Store one interaction; a repeated public id returns the first row instead."""
    existing = get_interaction(session, public_id=record.public_id)
    if existing is not None:
        return existing
    values: JsonDict = asdict(record)
    interaction = Interaction(**values)
    session.add(interaction)
    session.flush()
    return interaction


def get_interaction(session: Session, *, public_id: str) -> Interaction | None:
    """The interaction with ``public_id``, if stored."""
    return session.scalar(select(Interaction).where(Interaction.public_id == public_id))


def set_feedback(session: Session, *, public_id: str, thumbs_up: bool) -> Interaction:
    """Record a person's thumbs up or down on an interaction."""
    interaction = get_interaction(session, public_id=public_id)
    if interaction is None:
        raise LookupError(f"no interaction with id {public_id!r}")
    interaction.feedback = 1 if thumbs_up else -1
    session.flush()
    return interaction


def count_interactions(session: Session, *, persona: str | None = None) -> int:
    """How many interactions are stored, optionally for one persona."""
    query = select(func.count()).select_from(Interaction)
    if persona is not None:
        query = query.where(Interaction.persona == persona)
    return session.scalar(query) or 0


def recent_interactions(
    session: Session, *, limit: int = 100, persona: str | None = None
) -> Sequence[Interaction]:
    """The newest interactions first."""
    query = select(Interaction).order_by(Interaction.id.desc()).limit(limit)
    if persona is not None:
        query = query.where(Interaction.persona == persona)
    return session.scalars(query).all()


def unlabelled_consented(
    session: Session, *, after_id: int = 0, persona: str | None = None, limit: int = 10_000
) -> Sequence[Interaction]:
    """Consented interactions after ``after_id`` not yet labelled or picked for labelling."""
    labelled = select(DatasetRow.source_interaction_id).where(
        DatasetRow.source_interaction_id.is_not(None)
    )
    picked = select(LabellingPick.interaction_id)
    query = (
        select(Interaction)
        .where(Interaction.consent.is_(True), Interaction.id > after_id)
        .where(Interaction.id.not_in(labelled), Interaction.id.not_in(picked))
        .order_by(Interaction.id)
        .limit(limit)
    )
    if persona is not None:
        query = query.where(Interaction.persona == persona)
    return session.scalars(query).all()


@dataclass(frozen=True)
class ServedRequest:
    """What a rollout needs of one interaction: when, how sure, how fast."""

    created_at: datetime
    entropy_mean: float
    latency_ms: float


def served_by(
    session: Session, *, persona: str, version: int, since: datetime | None, limit: int = 5000
) -> list[ServedRequest]:
    """The newest requests of one persona that ``version`` answered (single-persona only)."""
    query = (
        select(
            Interaction.created_at,
            Interaction.entropy_mean,
            Interaction.latency_ms,
            Interaction.adapter_versions,
        )
        .where(Interaction.persona == persona)
        .order_by(Interaction.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(Interaction.created_at >= since)
    # The version sits in a JSON column; filtering it here stays portable across
    # SQLite and PostgreSQL, and the persona + time window keeps the scan small.
    return [
        ServedRequest(created_at, entropy, latency)
        for created_at, entropy, latency, versions in session.execute(query)
        if versions.get(persona) == version
    ]
