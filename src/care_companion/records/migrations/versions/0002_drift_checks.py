"""Drift checks: one row per check of a task's rolling window of recent inputs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("task", sa.String(length=20), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=True),
        sa.Column("window_inputs", sa.Integer(), nullable=False),
        sa.Column("window_images", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=True),
        sa.Column("p_values", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.CheckConstraint("task IN ('chest', 'wrist')", name=op.f("ck_drift_checks_task")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_checks")),
    )
    op.create_index("ix_drift_checks_task_at", "drift_checks", ["task", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_drift_checks_task_at", table_name="drift_checks")
    op.drop_table("drift_checks")
