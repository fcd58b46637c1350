"""DICOMweb STOW-RS (PS3.18 10.5) without the web framework: the ``multipart/related`` body split into DICOM
instances, each routed like a C-STORE instance (:func:`~care_companion.interop.dicom_inbox.route`) and grouped
by study, and the response dataset (DICOM JSON: Referenced SOP Sequence, Failed SOP Sequence)."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from care_companion.errors import RequestError
from care_companion.imaging.decode import has_pixel_data
from care_companion.interop.dicom_inbox import Unroutable, instance_uid, route, study_uid
from care_companion.tasks import TaskSpec

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
# Failure Reason (0008,1197) values (PS3.4 storage statuses)
CANNOT_UNDERSTAND = 0xC000  # not DICOM, or no task reads it
NO_PIXEL_DATA = 0xC210


@dataclass
class StowStudy:
    """The instances of one study in a STOW-RS request, by view (the first of each view is used)."""

    task: TaskSpec
    header: Dataset  # the first instance's attributes (patient, study)
    views: dict[str, tuple[str, bytes, Dataset]] = field(default_factory=dict)  # view -> (name, bytes, dataset)


@dataclass
class StowRequest:
    """A STOW-RS body sorted out: the studies to predict on and the instances refused, with their reasons."""

    studies: dict[str, StowStudy] = field(default_factory=dict)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # SOP class, SOP instance, reason, why


def split_related(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body.

    Raises:
        RequestError: another media type, or no part (415 / 400).
    """
    media = content_type.split(";")[0].strip().lower()
    if media != "multipart/related":
        raise RequestError(
            f'STOW-RS takes multipart/related; type="{DICOM_MEDIA_TYPE}", not {media or "no content type"}',
            code="unsupported_media_type",
            status=415,
        )
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    payloads = [p.get_payload(decode=True) for p in message.iter_parts()] if message.is_multipart() else []
    parts = [p for p in payloads if isinstance(p, bytes) and p]
    if not parts:
        raise RequestError("the multipart/related body holds no DICOM part", code="invalid_request", status=400)
    return parts


def sort_instances(parts: list[bytes], tasks: list[TaskSpec]) -> StowRequest:
    """Read, route and group the instances of a STOW-RS body; what cannot be read or routed is a failure."""
    out = StowRequest()
    for index, data in enumerate(parts):
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            sop_class, sop = str(ds.get("SOPClassUID", "")), instance_uid(ds)
            study = study_uid(ds)
        except Exception as exc:  # not DICOM, or no usable UIDs
            out.failed.append(("", f"part {index + 1}", CANNOT_UNDERSTAND, f"not a readable DICOM instance: {exc}"))
            continue
        if not has_pixel_data(ds):
            out.failed.append((sop_class, sop, NO_PIXEL_DATA, "no pixel data"))
            continue
        try:
            routed = route(ds, tasks)
        except Unroutable as exc:
            out.failed.append((sop_class, sop, CANNOT_UNDERSTAND, str(exc)))
            continue
        entry = out.studies.setdefault(study, StowStudy(task=routed.task, header=ds))
        if entry.task.name != routed.task.name:
            out.failed.append((sop_class, sop, CANNOT_UNDERSTAND, f"{routed.task.name} in a {entry.task.name} study"))
            continue
        entry.views.setdefault(routed.view, (f"{sop}.dcm", data, ds))
    return out


def stow_response(stored: list[Dataset], failed: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    """The STOW-RS response as DICOM JSON: each stored instance in the Referenced SOP Sequence, each refused one
    in the Failed SOP Sequence with its Failure Reason."""

    def item(sop_class: str, sop: str, reason: int | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop]},
        }
        if reason is not None:
            entry["00081197"] = {"vr": "US", "Value": [reason]}
        return entry

    response: dict[str, Any] = {}
    if stored:
        response["00081199"] = {
            "vr": "SQ",
            "Value": [item(str(ds.get("SOPClassUID", "")), str(ds.SOPInstanceUID)) for ds in stored],
        }
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": [item(c, s, r) for c, s, r, _ in failed]}
    return response


def related_body(instances: list[Dataset]) -> tuple[bytes, str]:
    """A WADO-RS answer: ``instances`` as DICOM files in one ``multipart/related; type="application/dicom"``
    body; returns the body and its content type."""
    boundary = f"care-{uuid.uuid4().hex}"
    body = io.BytesIO()
    for ds in instances:
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode())
        body.write(part.getvalue())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'
