"""federated rounds: what else a round did (note, noise, mode)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federated_rounds") as batch_op:
        batch_op.add_column(
            sa.Column(
                "details",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'{}'"),
                comment="mode, rule, noise std, dropped devices, why a round stopped",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("federated_rounds") as batch_op:
        batch_op.drop_column("details")
