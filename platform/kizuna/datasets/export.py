"""A stored dataset version as a JSONL file in the seed format."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from kizuna.datasets.pairs import seed_row, write_jsonl
from kizuna.store.datasets import dataset_rows, get_dataset


def export_dataset(
    session: Session, *, name: str, version: int | None, path: Path, split: str | None = None
) -> int:
    """Write a version's rows (one split, or all with the split in metadata); the count."""
    dataset = get_dataset(session, name=name, version=version)
    rows = dataset_rows(session, dataset_id=dataset.id, split=split)
    return write_jsonl(
        path,
        (seed_row(row.input, row.target, row.row_metadata, row.split) for row in rows),
    )
