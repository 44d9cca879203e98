"""relabel runs and their picks; token margins of interactions

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KINDS = ("retrain", "federated", "evaluation", "bootstrap")
_NEW_KINDS = (*_OLD_KINDS, "relabel")


def _kind_check(kinds: Sequence[str]) -> str:
    return "kind IN (" + ", ".join(f"'{kind}'" for kind in kinds) + ")"


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch_op:
        batch_op.add_column(
            sa.Column(
                "token_margins",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'[]'"),
                comment="top-1 minus top-2 probability per token",
            )
        )
        batch_op.add_column(sa.Column("margin_mean", sa.Float(), nullable=True))

    # Batch mode copies the table on SQLite, which cannot alter a CHECK in place.
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_constraint("run_kind", type_="check")
        batch_op.create_check_constraint("run_kind", _kind_check(_NEW_KINDS))

    op.create_table(
        "labelling_picks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("interaction_id", sa.Integer(), nullable=False),
        sa.Column("persona", sa.String(length=32), nullable=False),
        sa.Column("strength", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False, comment="uncertainty the sampler ranked by"),
        sa.Column(
            "rank", sa.Integer(), nullable=False, comment="1 = picked first within its persona"
        ),
        sa.Column("max_similarity", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "input", sa.Text(), nullable=False, comment="the request text, personal data scrubbed"
        ),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column(
            "outcome",
            sa.Enum(
                "pending",
                "labelled",
                "kept",
                "dropped",
                name="pick_outcome",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("drop_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["interaction_id"], ["interactions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "interaction_id"),
    )
    with op.batch_alter_table("labelling_picks") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labelling_picks_interaction_id"), ["interaction_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_labelling_picks_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("interactions") as batch_op:
        batch_op.drop_column("margin_mean")
        batch_op.drop_column("token_margins")
    with op.batch_alter_table("labelling_picks") as batch_op:
        batch_op.drop_index(batch_op.f("ix_labelling_picks_run_id"))
        batch_op.drop_index(batch_op.f("ix_labelling_picks_interaction_id"))
    op.drop_table("labelling_picks")
    op.execute("DELETE FROM runs WHERE kind = 'relabel'")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_constraint("run_kind", type_="check")
        batch_op.create_check_constraint("run_kind", _kind_check(_OLD_KINDS))
