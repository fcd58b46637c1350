"""Reconcile the object store with the records: find (and delete) orphan objects, report missing ones.

A prediction for a study writes its image to the store, then commits its rows; feedback copies the study's
images under ``feedback/``, then commits. A process killed between the two leaves an object no row refers
to: an orphan. Orphans are deleted only once older than a grace period, because a request in flight on
another replica has written its object but not yet committed. The reverse, a row whose object is absent, is
reported and never "fixed": it means data was lost and needs a person.

Rows are read before the store is listed, so an object written by a request that commits meanwhile is at
worst a young orphan (skipped), never a false "missing".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from care_companion.feedback.ledger import feedback_key
from care_companion.records.models import Feedback, Image, Study
from care_companion.storage.base import ObjectStore

log = logging.getLogger(__name__)

SWEPT_PREFIXES = ("images/", "feedback/")


@dataclass
class OrphanReport:
    """What a reconciliation found.

    Attributes:
        orphan_objects: objects under ``images/`` and ``feedback/`` that no row references and that are older
            than the grace period (the ones a sweep deletes).
        missing_objects: keys that Image rows or Feedback rows name but the store lacks.
        deleted: the orphans actually deleted.
        skipped_recent: orphans left alone because they are younger than the grace period.
    """

    orphan_objects: list[str] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped_recent: int = 0

    def summary(self) -> str:
        """The counts in one line, for logs."""
        return (
            f"{len(self.orphan_objects)} orphan objects ({len(self.deleted)} deleted, {self.skipped_recent} too "
            f"recent to touch), {len(self.missing_objects)} missing objects"
        )


@dataclass
class _References:
    """Keys the records refer to: ``expected`` must exist; ``kept`` (a superset) may not be swept."""

    expected: set[str]
    kept: set[str]


def _references(session: Session) -> _References:
    """Every key the records name, in three queries (not one per object)."""
    images = set(session.scalars(select(Image.object_key)))
    feedback = {key for key in session.scalars(select(Feedback.object_key)) if key}
    copies = session.execute(
        select(Study.task, Feedback.true_label, Image.sha256, Image.object_key)
        .select_from(Feedback)
        .join(Study, Feedback.study_id == Study.id)
        .join(Image, Image.study_id == Study.id)
        .distinct()
    )
    copied = {feedback_key(task, label, sha, key) for task, label, sha, key in copies}
    expected = images | feedback
    return _References(expected=expected, kept=expected | copied)


def _listed(store: ObjectStore) -> dict[str, datetime]:
    """The swept part of the store: key -> last modified."""
    found: dict[str, datetime] = {}
    for prefix in SWEPT_PREFIXES:
        found.update(store.list_modified(prefix))
    return found


def _missing(store: ObjectStore, expected: set[str], listed: dict[str, datetime]) -> list[str]:
    """Expected keys the store lacks; keys outside the swept prefixes (the service writes none there) are
    checked one by one."""
    absent = [key for key in expected if key not in listed]
    return sorted(key for key in absent if key.startswith(SWEPT_PREFIXES) or not store.exists(key))


def find_orphans(
    session: Session, store: ObjectStore, *, older_than: timedelta, now: datetime | None = None
) -> OrphanReport:
    """Compare the records with the store, deleting nothing.

    Args:
        session: a session on the records database (only read; its transaction is ended after the read).
        store: the object store the service writes to.
        older_than: the grace period; younger orphans are counted in ``skipped_recent`` only.
        now: the reference time (default: the current time, UTC).
    """
    references = _references(session)
    # End the read before the (possibly long) listing: on SQLite an open transaction holds the write lock.
    session.rollback()
    listed = _listed(store)
    cutoff = (now or datetime.now(UTC)) - older_than
    orphans = {key: modified for key, modified in listed.items() if key not in references.kept}
    old = sorted(key for key, modified in orphans.items() if modified <= cutoff)
    return OrphanReport(
        orphan_objects=old,
        missing_objects=_missing(store, references.expected, listed),
        skipped_recent=len(orphans) - len(old),
    )


def _delete(store: ObjectStore, keys: list[str]) -> list[str]:
    """Delete ``keys``; one that fails is logged and left for the next sweep."""
    deleted = []
    for key in keys:
        try:
            store.delete(key)
        except Exception as exc:  # the next sweep retries it
            log.warning("could not delete orphan object %s: %s", key, exc)
            continue
        deleted.append(key)
    return deleted


def sweep_orphans(
    sessions: sessionmaker[Session], store: ObjectStore, *, older_than: timedelta, delete: bool = True
) -> OrphanReport:
    """Find orphans (:func:`find_orphans`) and, with ``delete``, remove those older than ``older_than``.

    Just before deleting, the references are read once more, so an orphan that a request has adopted
    meanwhile (same content, same key) is kept.
    """
    with sessions() as session:
        report = find_orphans(session, store, older_than=older_than)
    if not delete or not report.orphan_objects:
        return report
    with sessions() as session:
        kept = _references(session).kept
    report.deleted = _delete(store, [key for key in report.orphan_objects if key not in kept])
    return report
