"""Heat maps: each prediction keeps its class-activation map per view (a small grid and the film's size), and why
its confidence is low, so the reading view can show both.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("heatmap", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("confidence_reasons", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("confidence_reasons")
        batch.drop_column("heatmap")
