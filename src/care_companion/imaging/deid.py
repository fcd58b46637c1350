"""De-identification of DICOM files before they enter a training set (DICOM PS3.15 Annex E, basic profile).

Implements the Basic Application Level Confidentiality Profile for the attributes radiographs carry in
practice: identifying attributes are emptied (Z), removed (X) or, for UIDs, replaced by new UIDs derived
from the old ones with a secret salt (U), so that images of one study still share a study UID. Private tags
and curve/overlay comments are removed, nested sequences are cleaned the same way, and the result is marked
``PatientIdentityRemoved = YES`` with the method in ``DeidentificationMethod``. Text burned into the pixels
is not touched: pixel data is not metadata.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from care_companion.errors import InvalidImageError
from care_companion.imaging.decode import sniff_format

METHOD = "DICOM PS3.15 E.1 Basic Profile (Care Companion)"

# Z: replace with an empty value (type 2 attributes that must stay present)
EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ContentCreatorName",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest",
)
# X: remove
REMOVE = (
    "AcquisitionDate",
    "AcquisitionDateTime",
    "AcquisitionTime",
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "BranchOfService",
    "ContentDate",
    "ContentTime",
    "CountryOfResidence",
    "CurrentPatientLocation",
    "DerivationDescription",
    "DeviceSerialNumber",
    "EthnicGroup",
    "ImageComments",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "InstitutionAddress",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "MilitaryRank",
    "NameOfPhysiciansReadingStudy",
    "Occupation",
    "OperatorsName",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName",
    "PatientReligiousPreference",
    "PatientSize",
    "PatientTelephoneNumbers",
    "PatientWeight",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RequestAttributesSequence",
    "RequestingPhysician",
    "RequestingService",
    "ScheduledProcedureStepID",
    "SeriesDate",
    "SeriesTime",
    "StationName",
    "StudyComments",
    "TextComments",
)
# U: replace with a new UID derived (with a salt) from the old one
UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
    "IrradiationEventUID",
    "SynchronizationFrameOfReferenceUID",
)


def _new_uid(old: str, salt: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[salt, str(old)]))


def _clean(ds: Any, salt: str) -> None:
    for name in EMPTY:
        if name in ds:
            ds.data_element(name).value = ""
    for name in REMOVE:
        if name in ds:
            delattr(ds, name)
    for name in UIDS:
        if name in ds and ds.data_element(name).value:
            ds.data_element(name).value = _new_uid(ds.data_element(name).value, salt)
    ds.remove_private_tags()
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _clean(item, salt)


def deidentify_dicom(data: bytes, *, salt: str, name: str = "") -> bytes:
    """A de-identified copy of a DICOM file (the pixel data untouched).

    Args:
        data: the DICOM file.
        salt: a secret mixed into replacement UIDs (the same salt maps the same UID to the same new UID).
        name: file name for error messages.

    Raises:
        InvalidImageError: when ``data`` is not a readable DICOM file.
    """
    import pydicom

    label = name or "file"
    if sniff_format(data) != "dicom":
        raise InvalidImageError(f"{label}: not a DICOM file", reason="not_an_image")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidImageError(f"{label}: not a readable DICOM file ({exc})", reason="not_an_image") from exc
    _clean(ds, salt)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def salt_for(secret: str) -> str:
    """A UID salt derived from a deployment secret (so UIDs cannot be reversed without it)."""
    return hashlib.sha256(f"deid:{secret}".encode()).hexdigest()
