"""Release evidence: the canary's shadow answers on production's films, and per-version serving traffic
(answered, refused, failed, a latency histogram) for the canary report's error rate and latency.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.Integer(), sa.ForeignKey("predictions.id"), nullable=False),
        sa.Column("task", sa.String(20), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50)),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(50), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.Column("refused", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_shadow_predictions_prediction_id", "shadow_predictions", ["prediction_id"])
    op.create_index("ix_shadow_predictions_model_version", "shadow_predictions", ["model_version"])
    op.create_table(
        "serving_stats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("task", sa.String(20), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("model_version", sa.String(50)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("replica", sa.String(200), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("latency_counts", sa.JSON(), nullable=False),
    )
    op.create_index("ix_serving_stats_model_version", "serving_stats", ["model_version"])


def downgrade() -> None:
    op.drop_table("serving_stats")
    op.drop_table("shadow_predictions")
