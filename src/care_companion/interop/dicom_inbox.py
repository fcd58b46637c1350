"""Where received DICOM instances wait: routed to a task and view, kept on disk before they are acknowledged,
grouped by study until the study has settled.

Routing uses the task registry: ``BodyPartExamined`` must be one of a task's ``dicom_body_parts``, and for a
multi-view task ``ViewPosition`` one of a view's ``dicom_views`` values (an instance without ``ViewPosition`` is
read by its ``ViewCodeSequence``: the SNOMED CT projection codes of CID 4010 stand for the matching
``ViewPosition`` terms; an oblique projection is no view of ours). An instance no task accepts is kept
apart (``unroutable/``) and refused with a clear status; nothing is guessed. Our own results (``Manufacturer``
Care Companion: the SR and heat-map Secondary Captures) are never read as films, whatever their headers say,
should the PACS send them back.

The spool (``CARE_DATA_DIR/dicom-spool`` by default) holds ``incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm``,
each written to a temporary name, flushed to disk and renamed before the sender hears success, so an
acknowledged instance survives a crash of the receiver. A study is **settled** when its newest instance is older
than the settle time; a processed study moves to ``done/``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from care_companion.tasks import TaskSpec

_UID = re.compile(r"^[0-9.]{1,64}$")
# CID 4010 (DX View) SNOMED CT projection codes as the ViewPosition term each stands for (obliques: none).
VIEW_CODES = {
    "272479007": "PA",  # postero-anterior
    "399348003": "AP",  # antero-posterior
    "399067008": "LATERAL",  # lateral
    "399173006": "LL",  # left lateral
    "399198007": "RL",  # right lateral
    "399352003": "LATERAL",  # lateral-medial
    "399260004": "LATERAL",  # medial-lateral
}
RESULTS_MANUFACTURER = "Care Companion"  # the Manufacturer of the SR and Secondary Captures we write


class Unroutable(Exception):
    """No registered task reads this instance (body part or view), or it lacks the identifiers to file it."""


@dataclass(frozen=True)
class Routed:
    """The task and view an instance belongs to."""

    task: TaskSpec
    view: str


def route(ds: Dataset, tasks: list[TaskSpec]) -> Routed:
    """The task and view of an instance, from its ``BodyPartExamined`` and ``ViewPosition``.

    Raises:
        Unroutable: one of our own results, no task reads its body part, or the task has several views and its
            view position is none of them.
    """
    if str(ds.get("Manufacturer", "") or "").strip() == RESULTS_MANUFACTURER:
        raise Unroutable(f"{ds.get('SeriesDescription', 'an instance')} is a Care Companion result, not a film")
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    position = view_position(ds)
    task = next((t for t in tasks if part and part in [p.upper() for p in t.dicom_body_parts]), None)
    if task is None:
        readable = sorted({p for t in tasks for p in t.dicom_body_parts})
        raise Unroutable(f"no task reads BodyPartExamined {part or '(empty)'}; tasks read {', '.join(readable)}")
    if not task.multiview:
        return Routed(task, task.views[0])
    for view, positions in task.dicom_views.items():
        if position in [p.upper() for p in positions]:
            return Routed(task, view)
    raise Unroutable(f"{task.name}: ViewPosition {position or '(empty)'} is none of its views {', '.join(task.views)}")


def view_position(ds: Dataset) -> str:
    """The instance's ``ViewPosition`` (upper case), else the term its ``ViewCodeSequence`` code stands for
    (:data:`VIEW_CODES`), else empty."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position:
        return position
    for item in ds.get("ViewCodeSequence", None) or []:
        if str(item.get("CodingSchemeDesignator", "")).upper() == "SCT":
            term = VIEW_CODES.get(str(item.get("CodeValue", "")).strip())
            if term:
                return term
    return ""


def checked_uid(ds: Dataset, keyword: str) -> str:
    """The instance's UID attribute ``keyword`` (``StudyInstanceUID``, ``SOPInstanceUID``), checked to be a UID
    (these name folders and files).

    Raises:
        Unroutable: missing or malformed.
    """
    return checked_uid_text(str(ds.get(keyword, "") or ""), keyword)


def checked_uid_text(uid: str, keyword: str) -> str:
    """``uid`` checked to be a DICOM UID (``keyword`` names it in the error).

    Raises:
        Unroutable: empty or malformed.
    """
    if not _UID.match(uid):
        raise Unroutable(f"{keyword} {uid or '(empty)'} is not a DICOM UID")
    return uid


def study_uid(ds: Dataset) -> str:
    """The instance's checked ``StudyInstanceUID``."""
    return checked_uid(ds, "StudyInstanceUID")


def instance_uid(ds: Dataset) -> str:
    """The instance's checked ``SOPInstanceUID``."""
    return checked_uid(ds, "SOPInstanceUID")


class Spool:
    """Received instances on disk, by study (see the module's description)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.unroutable = self.root / "unroutable"
        self.done = self.root / "done"
        for folder in (self.incoming, self.unroutable, self.done):
            folder.mkdir(parents=True, exist_ok=True)

    def keep(self, ds: Dataset, *, routable: bool = True) -> Path:
        """Write ``ds`` (with its file meta) durably: temporary file, flush, fsync, rename."""
        sop = instance_uid(ds)
        folder = self.incoming / study_uid(ds) if routable else self.unroutable
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sop}.dcm"
        tmp = folder / f".{sop}.part"
        with tmp.open("wb") as out:
            ds.save_as(out, enforce_file_format=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
        return path

    def studies(self) -> list[str]:
        """Studies with instances waiting."""
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir() and any(p.glob("*.dcm")))

    def settled(self, settle_seconds: float, now: float | None = None) -> list[str]:
        """Waiting studies whose newest instance arrived at least ``settle_seconds`` ago."""
        now = time.time() if now is None else now
        return [
            uid
            for uid in self.studies()
            if now - max(p.stat().st_mtime for p in (self.incoming / uid).glob("*.dcm")) >= settle_seconds
        ]

    def instances(self, study: str) -> list[Path]:
        """A waiting study's instance files, in name order."""
        return sorted((self.incoming / study).glob("*.dcm"))

    def finish(self, study: str) -> Path:
        """Move a processed study to ``done/`` (kept: the source instances of its results)."""
        target = self.done / study
        if target.exists():
            for path in self.instances(study):
                path.replace(target / path.name)
            shutil.rmtree(self.incoming / study, ignore_errors=True)
        else:
            (self.incoming / study).replace(target)
        return target

    def sweep_partials(self) -> int:
        """Remove temporary files a crash left behind (never acknowledged); returns how many."""
        partials = list(self.root.rglob(".*.part"))
        for path in partials:
            path.unlink(missing_ok=True)
        return len(partials)
