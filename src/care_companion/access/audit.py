"""The audit trail: one row per action on patient data or accounts, with ids and counts only.

A row says who (the user, or ``anonymous``), what (``action``), on which resource, and the request's id; its
``detail`` holds ids, counts, roles and flags, never patient names, MRNs, passwords, keys or text typed by
the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session

from care_companion.records.models import AuditLog, User
from care_companion.records.repos import write_audit
from care_companion.records.schemas import DicomEvent


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


def ids(rows: Iterable[_HasId]) -> list[int]:
    """The ids of ``rows``, in order: what an audit row of a listing records."""
    return [row.id for row in rows]


def audit(
    session: Session,
    user: User | None,
    action: str,
    resource_type: str,
    resource_id: str | int | None = None,
    *,
    request_id: str | None = None,
    **detail: Any,
) -> AuditLog:
    """Append an audit row for ``user`` (None: anonymous) in the caller's transaction.

    Args:
        action: what was done, ``<resource>.<verb>`` (``patient.read``, ``auth.failed``).
        request_id: the id of the request that did it, to match the row with the service's logs.
        detail: ids and counts only, never names or free text.
    """
    return write_audit(
        session=session,
        user=user,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id,
        detail=detail,
    )


def record_dicom_events(
    session: Session, user: User, events: Iterable[DicomEvent], *, request_id: str | None = None
) -> int:
    """One audit row per DICOM instance the receiver (signed in as ``user``) took or sent: ``dicom.received`` or
    ``dicom.sent``, the SOP Instance UID as the resource, its study, class, status, peer AE title and time.
    Returns how many rows were written."""
    count = 0
    for event in events:
        audit(
            session,
            user,
            event.action,
            "dicom_instance",
            event.sop_instance_uid or None,
            request_id=request_id,
            study_uid=event.study_uid,
            sop_class_uid=event.sop_class_uid,
            status=event.status,
            peer=event.peer,
            at=event.at.isoformat(),
        )
        count += 1
    return count
