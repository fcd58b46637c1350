"""FHIR push: what a configured FHIR server was last sent of each prediction (report status, verdicts shown), so
a result is sent again only when a radiologist's verdict changed it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fhir_pushes",
        sa.Column("prediction_id", sa.Integer(), sa.ForeignKey("predictions.id"), primary_key=True),
        sa.Column("verdicts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fhir_pushes")
