"""Audit events of the DICOM receiver, kept until the service has recorded them: every instance received (with the
status it was answered) and every result instance sent to the PACS becomes an audit row in the service's records
(``POST /v1/dicom/audit``). The receiver writes each event to ``audit/`` in its spool as it happens (written whole,
then renamed) and sends what waits on each worker round, oldest first; while the service is down they wait."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from pydicom.dataset import Dataset

from care_companion.records.schemas import DicomAction, DicomEvent

log = logging.getLogger(__name__)

BATCH = 500  # events per request to the service


def event_of(ds: Dataset, action: DicomAction, *, status: int = 0, peer: str = "") -> DicomEvent:
    """The audit event of an instance received or sent (identifiers only; a malformed UID is left empty)."""

    def uid(keyword: str) -> str:
        value = str(ds.get(keyword, "") or "")
        return value if len(value) <= 64 and all(c in "0123456789." for c in value) else ""

    return DicomEvent(
        action=action,
        sop_instance_uid=uid("SOPInstanceUID"),
        study_uid=uid("StudyInstanceUID"),
        sop_class_uid=uid("SOPClassUID"),
        status=status,
        peer=peer[:16],
        at=datetime.now(UTC),
    )


class AuditQueue:
    """Events not yet recorded by the service, one file each in ``root``, oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._serial = 0

    def add(self, event: DicomEvent) -> None:
        """Keep an event until it is recorded (written whole, then renamed)."""
        with self._lock:
            self._serial += 1
            name = f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}-{self._serial:06d}"
        tmp = self.root / f".{name}.part"
        tmp.write_text(event.model_dump_json())
        tmp.replace(self.root / f"{name}.json")

    def pending(self) -> list[Path]:
        """Waiting events' files, oldest first."""
        return sorted(self.root.glob("*.json"))

    def flush(self, record: Callable[[list[DicomEvent]], None]) -> int:
        """Hand waiting events to ``record`` in batches, removing each batch once recorded; an exception from
        ``record`` leaves the rest for a later round. Returns how many were recorded."""
        done = 0
        paths = self.pending()
        for start in range(0, len(paths), BATCH):
            batch, events = paths[start : start + BATCH], []
            for path in batch:
                try:
                    events.append(DicomEvent.model_validate(json.loads(path.read_text())))
                except (OSError, ValueError, ValidationError) as exc:  # never written by us whole: kept aside
                    log.error("unreadable audit event %s: %s", path.name, exc)
                    path.replace(path.with_suffix(".bad"))
            if events:
                record(events)
            for path in batch:
                path.unlink(missing_ok=True)
            done += len(events)
        return done
