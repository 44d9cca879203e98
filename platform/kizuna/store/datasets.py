"""Versioned datasets: immutable sets of input/target rows with their provenance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kizuna.store.models import Dataset, DatasetRow, JsonDict


@dataclass(frozen=True, kw_only=True)
class RowRecord:
    """One pair to put in a dataset version."""

    input: str
    target: str
    metadata: JsonDict = field(default_factory=dict)
    split: str = "train"
    source_interaction_id: int | None = None


def create_dataset_version(
    session: Session,
    *,
    name: str,
    rows: Iterable[RowRecord],
    persona: str | None = None,
    provenance: JsonDict | None = None,
) -> Dataset:
    """Write a new version of dataset ``name``; earlier versions are never changed."""
    latest = session.scalar(select(func.max(Dataset.version)).where(Dataset.name == name))
    dataset = Dataset(
        name=name, version=(latest or 0) + 1, persona=persona, provenance=provenance or {}
    )
    dataset.rows = [
        DatasetRow(
            input=row.input,
            target=row.target,
            row_metadata=row.metadata,
            split=row.split,
            source_interaction_id=row.source_interaction_id,
        )
        for row in rows
    ]
    dataset.row_count = len(dataset.rows)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, *, name: str, version: int | None = None) -> Dataset:
    """A dataset version (the newest when ``version`` is None)."""
    query = select(Dataset).where(Dataset.name == name)
    query = (
        query.where(Dataset.version == version)
        if version
        else query.order_by(Dataset.version.desc())
    )
    dataset = session.scalars(query.limit(1)).first()
    if dataset is None:
        raise LookupError(f"no dataset {name!r}" + (f" version {version}" if version else ""))
    return dataset


def dataset_rows(
    session: Session, *, dataset_id: int, split: str | None = None
) -> Sequence[DatasetRow]:
    """The rows of one dataset version, in insertion order."""
    query = select(DatasetRow).where(DatasetRow.dataset_id == dataset_id).order_by(DatasetRow.id)
    if split is not None:
        query = query.where(DatasetRow.split == split)
    return session.scalars(query).all()
