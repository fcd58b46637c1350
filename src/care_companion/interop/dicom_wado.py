"""Our results of a DICOM study as DICOM instances, for DICOMweb WADO-RS (``GET /dicomweb/studies/{uid}``): for
each stored prediction on films uploaded as DICOM (over STOW-RS, the C-STORE receiver or an upload), its
Structured Report as it stands now and a heat-map Secondary Capture per view read, built from the records and
the stored films.

The UIDs are stable: each is derived from a site secret, the prediction and the report's version (the number of
radiologists' verdicts it shows), so the same request gives the same instances, and a report after a verdict is
a new instance that names the one before it as its predecessor (that one is built again, identically, to be
referred to)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from care_companion.access.patients import DicomStudyResult, dicom_study_results
from care_companion.config import Settings
from care_companion.imaging.decode import DecodeLimits, decode_image
from care_companion.imaging.deid import salt_for
from care_companion.interop.dicom_results import heatmap_captures
from care_companion.interop.dicom_sr import result_sr
from care_companion.interop.fhir import ai_result
from care_companion.models.heatmap import stored_heatmap_png
from care_companion.records.models import User
from care_companion.storage.base import ObjectStore, store_errors


def stable_uids(secret: str, prediction_id: int, version: int) -> Callable[[str], str]:
    """A UID source for the report ``version`` of a prediction: the same role always gives the same UID."""
    return lambda role: str(generate_uid(entropy_srcs=[secret, "result", str(prediction_id), str(version), role]))


def result_datasets(
    results: list[DicomStudyResult],
    read: Callable[[str], bytes],
    *,
    secret: str,
    mrn_system: str,
    limits: DecodeLimits,
) -> list[Dataset]:
    """Each result's current SR and its heat-map Secondary Captures (``read``: an object key's bytes)."""
    out: list[Dataset] = []
    for stored in results:
        result = ai_result(stored.prediction, stored.study, stored.verdicts, mrn_system=mrn_system)
        data = {view: read(image.object_key) for view, image in stored.films.items()}
        sources = {view: pydicom.dcmread(io.BytesIO(raw)) for view, raw in data.items()}
        report: Dataset | None = None
        for version in range(len(result.verdicts) + 1):
            report = result_sr(
                replace(result, verdicts=result.verdicts[:version]),
                list(sources.values()),
                previous=report,
                uid=stable_uids(secret, result.prediction_id, version),
            )
        assert report is not None
        out.append(report)
        maps = (stored.prediction.heatmap or {}).get("views") or {}
        films = {v: decode_image(raw, name=stored.films[v].object_key, limits=limits) for v, raw in data.items()}
        pngs = {view: stored_heatmap_png(entry) for view, entry in maps.items()}
        out += heatmap_captures(result, sources, films, pngs.get, uid=stable_uids(secret, result.prediction_id, -1))
    return out


def study_instances(
    *,
    session: Session,
    user: User,
    store: ObjectStore,
    settings: Settings,
    study_uid: str,
    request_id: str | None = None,
) -> list[Dataset]:
    """Our result instances of the DICOM study ``study_uid`` in the studies ``user`` sees (audited per result).

    Raises:
        NotFound: no film of that study in a study ``user`` sees.
        ServiceUnavailable: the object store failed.
    """
    results = dicom_study_results(session=session, user=user, study_uid=study_uid, request_id=request_id)

    def read(key: str) -> bytes:
        with store_errors("reading a film of the study"):
            return store.get_bytes(key)

    return result_datasets(
        results,
        read,
        secret=salt_for(settings.jwt_secret),
        mrn_system=settings.fhir_patient_system,
        limits=DecodeLimits.from_settings(settings),
    )


_SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
_INSTANCE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber")


def _match(ds: Dataset, keys: tuple[str, ...]) -> dict[str, Any]:
    out = Dataset()
    for key in keys:
        if key in ds:
            setattr(out, key, ds.data_element(key).value)  # type: ignore[union-attr]
    return out.to_json_dict()


def series_matches(instances: list[Dataset]) -> list[dict[str, Any]]:
    """QIDO-RS series matches (DICOM JSON) of ``instances``, one per series, with its number of instances."""
    out: dict[str, dict[str, Any]] = {}
    for ds in instances:
        entry = out.setdefault(ds.SeriesInstanceUID, _match(ds, _SERIES_KEYS))
        count = entry.setdefault("00201209", {"vr": "IS", "Value": [0]})
        count["Value"] = [int(count["Value"][0]) + 1]
    return list(out.values())


def instance_matches(instances: list[Dataset]) -> list[dict[str, Any]]:
    """QIDO-RS instance matches (DICOM JSON) of ``instances``."""
    return [_match(ds, _INSTANCE_KEYS) for ds in instances]
