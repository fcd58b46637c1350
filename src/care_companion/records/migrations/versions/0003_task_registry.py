"""Tasks become rows: studies, predictions and drift checks point at ``tasks`` instead of a fixed CHECK list.

A task registered in code is written to ``tasks`` on first use (``repos.ensure_task``), so adding a task needs
no migration. The rows seeded here are the tasks that existed when this revision was written.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEEDED = [("chest", "chest", ["frontal"]), ("wrist", "wrist", ["pa", "lateral"])]
TABLES = ("studies", "predictions", "drift_checks")


def upgrade() -> None:
    tasks = op.create_table(
        "tasks",
        sa.Column("name", sa.String(length=20), nullable=False),
        sa.Column("body_part", sa.String(length=50), nullable=False),
        sa.Column("views", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tasks")),
    )
    op.bulk_insert(tasks, [{"name": n, "body_part": b, "views": v} for n, b, v in SEEDED])
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_task"), type_="check")
            batch.create_foreign_key(op.f(f"fk_{table}_task_tasks"), "tasks", ["task"], ["name"])


def downgrade() -> None:
    known = ", ".join(repr(name) for name, _, _ in SEEDED)
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"fk_{table}_task_tasks"), type_="foreignkey")
            batch.create_check_constraint(op.f(f"ck_{table}_task"), f"task IN ({known})")
    op.drop_table("tasks")
