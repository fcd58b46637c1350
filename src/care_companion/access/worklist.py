"""The radiologists' worklist: the studies of the reader's department with an AI answer, in triage order.

Flagged (AI-positive) studies are read first, then low-confidence ones, then the rest, each longest-waiting
first: this ordering is the clinical value of an AI triage tool. Reading the list is audited.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from care_companion.access.audit import audit
from care_companion.access.departments import visible_department
from care_companion.records.models import User
from care_companion.records.repos import DEFAULT_LIMIT, worklist_rows
from care_companion.records.schemas import WorklistItem
from care_companion.tasks import get_task


def worklist(
    *,
    session: Session,
    user: User,
    task: str | None = None,
    status: str = "awaiting",
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[WorklistItem], int]:
    """A page of ``user``'s worklist (their department's studies; admins: every department) and its count.

    Args:
        task: only studies of this registered task (an unknown one is a :class:`ConfigError`).
        status: ``awaiting`` (triage order) or ``reviewed`` (newest verdict first).

    Raises:
        DataError: an unknown status.
    """
    if task is not None:
        get_task(task)
    rows, count = worklist_rows(
        session=session, department=visible_department(user), task=task, status=status, offset=offset, limit=limit
    )
    items = [WorklistItem.model_validate(row) for row in rows]
    audit(
        session,
        user,
        "worklist.read",
        "worklist",
        request_id=request_id,
        task=task,
        status=status,
        count=count,
        studies=[item.study_id for item in items],
    )
    return items, count
