"""DICOM studies: an image uploaded as DICOM keeps its StudyInstanceUID, so the study's AI results can be
retrieved by that UID over DICOMweb (WADO-RS).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("dicom_study_uid", sa.String(64), nullable=True))
        batch.create_index("ix_images_dicom_study_uid", ["dicom_study_uid"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_dicom_study_uid")
        batch.drop_column("dicom_study_uid")
