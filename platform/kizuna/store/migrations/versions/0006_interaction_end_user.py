"""interactions: the end user a client names (OpenAI's user field)

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch_op:
        batch_op.add_column(
            sa.Column(
                "end_user",
                sa.String(length=256),
                nullable=True,
                comment="the client's end-user id (OpenAI's user field)",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("interactions") as batch_op:
        batch_op.drop_column("end_user")
