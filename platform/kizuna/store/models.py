"""The store's tables, as SQLAlchemy 2 typed models.

The schema itself is owned by the Alembic migrations beside this file; a test checks
that the migrations and these models agree. Enumerations are stored as checked strings
(not native enums) so that adding a value is a plain migration on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JsonDict = dict[str, Any]


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the store uses."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would otherwise return naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store everything in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Mark values read back as UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of every Kizuna table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {JsonDict: JSON, datetime: UTCDateTime()}


def _checked_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class AdapterStatus(enum.StrEnum):
    """Where an adapter version stands in its rollout."""

    CANDIDATE = "candidate"
    CANARY = "canary"
    STABLE = "stable"
    RETIRED = "retired"


class RunKind(enum.StrEnum):
    """What kind of long-running work a run records."""

    RETRAIN = "retrain"
    FEDERATED = "federated"
    EVALUATION = "evaluation"
    BOOTSTRAP = "bootstrap"
    RELABEL = "relabel"


class RunPhase(enum.StrEnum):
    """The life cycle of a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Interaction(Base):
    """One request served by an adapter (or a mix of adapters), with its uncertainty."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The id clients see: their Idempotency-Key when they send one, else a server UUID.
    # Unique, so a retried or replayed request is stored once.
    public_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    device_id: Mapped[str | None] = mapped_column(String(128), index=True)
    end_user: Mapped[str | None] = mapped_column(
        String(256), comment="the client's end-user id (OpenAI's user field)"
    )
    persona: Mapped[str | None] = mapped_column(String(32), index=True)
    mix: Mapped[JsonDict | None] = mapped_column(comment="persona -> weight, for fused requests")
    adapter_versions: Mapped[JsonDict] = mapped_column(comment="persona -> version served")
    strength: Mapped[float] = mapped_column(Float)
    request_text: Mapped[str] = mapped_column(Text)
    output_text: Mapped[str] = mapped_column(Text)
    entropy_mean: Mapped[float] = mapped_column(Float, index=True)
    entropy_max: Mapped[float] = mapped_column(Float)
    token_entropies: Mapped[list[float]] = mapped_column(JSON)
    token_margins: Mapped[list[float]] = mapped_column(
        JSON, default=list, comment="top-1 minus top-2 probability per token"
    )
    margin_mean: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    consent: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback: Mapped[int | None] = mapped_column(Integer, comment="+1 thumbs up, -1 down")


class Adapter(Base):
    """One version of one persona's LoRA adapter and where it stands."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("persona", "version", name="uq_adapters_persona_version"),
        # At most one stable version per persona, enforced by the database itself.
        Index(
            "uq_adapters_one_stable",
            "persona",
            unique=True,
            sqlite_where=text("status = 'stable'"),
            postgresql_where=text("status = 'stable'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[AdapterStatus] = mapped_column(_checked_enum(AdapterStatus, "adapter_status"))
    artifact_url: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    lineage: Mapped[JsonDict] = mapped_column(default=dict)
    metrics: Mapped[JsonDict] = mapped_column(default=dict)
    traffic_weight: Mapped[float] = mapped_column(
        Float, default=0.0, comment="share of the persona's traffic a canary gets"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Dataset(Base):
    """One immutable version of a training dataset, with where its rows came from."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    persona: Mapped[str | None] = mapped_column(String(32), index=True)
    provenance: Mapped[JsonDict] = mapped_column(default=dict)
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    rows: Mapped[list[DatasetRow]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", order_by="DatasetRow.id"
    )


class DatasetRow(Base):
    """One input/target pair of a dataset version."""

    __tablename__ = "dataset_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    input: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    row_metadata: Mapped[JsonDict] = mapped_column("metadata", default=dict)
    split: Mapped[str] = mapped_column(String(8), default="train")
    source_interaction_id: Mapped[int | None] = mapped_column(
        ForeignKey("interactions.id", ondelete="SET NULL"), index=True
    )

    dataset: Mapped[Dataset] = relationship(back_populates="rows")


class Run(Base):
    """Long-running work (retrain, federated, evaluation, bootstrap, relabel), with progress."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[RunKind] = mapped_column(_checked_enum(RunKind, "run_kind"), index=True)
    persona: Mapped[str | None] = mapped_column(String(32), index=True)
    phase: Mapped[RunPhase] = mapped_column(_checked_enum(RunPhase, "run_phase"))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[JsonDict] = mapped_column(default=dict)
    metrics: Mapped[JsonDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class PickOutcome(enum.StrEnum):
    """What became of an interaction a relabel run picked."""

    PENDING = "pending"  # waiting for the teacher
    LABELLED = "labelled"  # the teacher answered; quality not yet checked
    KEPT = "kept"  # in the run's dataset version
    DROPPED = "dropped"  # failed a quality filter (see drop_reason)


class LabellingPick(Base):
    """An interaction a relabel run chose, why, and what the teacher made of it.

    Picks are the run's durable work list: a resumed run labels only what is still
    pending, and an interaction picked once is not offered to a later run again.
    """

    __tablename__ = "labelling_picks"
    __table_args__ = (UniqueConstraint("run_id", "interaction_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    interaction_id: Mapped[int] = mapped_column(
        ForeignKey("interactions.id", ondelete="CASCADE"), index=True
    )
    persona: Mapped[str] = mapped_column(String(32))
    strength: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float, comment="uncertainty the sampler ranked by")
    rank: Mapped[int] = mapped_column(Integer, comment="1 = picked first within its persona")
    max_similarity: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    input: Mapped[str] = mapped_column(Text, comment="the request text, personal data scrubbed")
    target: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[PickOutcome] = mapped_column(_checked_enum(PickOutcome, "pick_outcome"))
    drop_reason: Mapped[str | None] = mapped_column(String(32))


class FederatedRound(Base):
    """One Flower round of one federated run."""

    __tablename__ = "federated_rounds"
    __table_args__ = (UniqueConstraint("run_id", "round_number", name="uq_rounds_run_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_number: Mapped[int] = mapped_column(Integer)
    participants: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[list[JsonDict]] = mapped_column(
        JSON, default=list, comment="[{device_id, reason}]"
    )
    update_norms: Mapped[list[float]] = mapped_column(JSON, default=list)
    epsilon: Mapped[float | None] = mapped_column(Float, comment="cumulative ε after this round")
    details: Mapped[JsonDict] = mapped_column(
        default=dict, comment="mode, rule, noise std, dropped devices, why a round stopped"
    )
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Device(Base):
    """A fleet device allowed to call the API; only a hash of its token is kept."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column()


class Rollout(Base):
    """One rollout in the embedded backend: its spec, its recorded state, its history.

    In a cluster the same spec and state live in a ``RetrainRun`` resource instead.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    persona: Mapped[str] = mapped_column(String(32), index=True)
    spec: Mapped[JsonDict] = mapped_column()
    state: Mapped[JsonDict] = mapped_column(default=dict)
    events: Mapped[list[JsonDict]] = mapped_column(
        JSON, default=list, comment="[{at, action, phase}] in the order they took effect"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    """One operator action: who did what to which persona or rollout, and when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    details: Mapped[JsonDict] = mapped_column(default=dict)
