"""rollouts: the embedded backend's rollouts, and a canary's traffic share

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.add_column(
            sa.Column(
                "traffic_weight",
                sa.Float(),
                nullable=False,
                server_default=sa.text("0"),
                comment="share of the persona's traffic a canary gets",
            )
        )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("persona", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column(
            "events",
            sa.JSON(),
            nullable=False,
            comment="[{at, action, phase}] in the order they took effect",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("rollouts") as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_persona"), ["persona"], unique=False)


def downgrade() -> None:
    op.drop_table("rollouts")
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.drop_column("traffic_weight")
