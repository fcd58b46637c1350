"""DICOM de-identification (PS3.15 basic profile): identifiers gone, UIDs replaced consistently, pixels kept."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from care_companion.errors import InvalidImageError
from care_companion.imaging.decode import decode_image
from care_companion.imaging.deid import METHOD, deidentify_dicom
from tests.helpers import dicom_bytes

PIXELS = np.tile(np.linspace(0, 4000, 96), (80, 1)).astype(np.uint16)


def _identified(study_uid: str = "1.2.3.4.5") -> bytes:
    item = Dataset()
    item.PatientName = "Nested^Name"
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    return dicom_bytes(
        PIXELS,
        bits_stored=12,
        PatientName="Doe^Jane",
        PatientID="MRN-0042",
        PatientBirthDate="19800101",
        PatientAddress="1 Main Street",
        InstitutionName="General Hospital",
        ReferringPhysicianName="House^Gregory",
        OperatorsName="Tech^Tom",
        AccessionNumber="ACC-9",
        StudyDate="20260101",
        StudyInstanceUID=study_uid,
        SeriesInstanceUID="1.2.3.4.6",
        ReferencedImageSequence=[item],
    )


def test_identifiers_are_removed_and_marked() -> None:
    original = _identified()
    clean = deidentify_dicom(original, salt="s3cret")
    ds = pydicom.dcmread(io.BytesIO(clean))
    for name in ("PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber"):
        assert str(ds.data_element(name).value) == ""
    for name in ("PatientAddress", "InstitutionName", "OperatorsName"):
        assert name not in ds
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == METHOD
    nested = ds.ReferencedImageSequence[0]
    assert str(nested.PatientName) == "" and nested.ReferencedSOPInstanceUID != "1.2.3.9"
    for text in (b"Doe^Jane", b"MRN-0042", b"General Hospital", b"1 Main Street", b"Nested^Name"):
        assert text in original and text not in clean
    np.testing.assert_array_equal(decode_image(clean), decode_image(original))


def test_uids_are_replaced_consistently_with_the_salt() -> None:
    one = pydicom.dcmread(io.BytesIO(deidentify_dicom(_identified(), salt="a")))
    again = pydicom.dcmread(io.BytesIO(deidentify_dicom(_identified(), salt="a")))
    other_salt = pydicom.dcmread(io.BytesIO(deidentify_dicom(_identified(), salt="b")))
    assert one.StudyInstanceUID != "1.2.3.4.5"
    assert one.StudyInstanceUID == again.StudyInstanceUID  # images of one study still belong together
    assert one.StudyInstanceUID != other_salt.StudyInstanceUID
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID


def test_private_tags_are_removed() -> None:
    ds = pydicom.dcmread(io.BytesIO(_identified()))
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x01, "LO", "secret vendor note")
    out = io.BytesIO()
    ds.save_as(out)
    clean = pydicom.dcmread(io.BytesIO(deidentify_dicom(out.getvalue(), salt="x")))
    assert not any(element.tag.is_private for element in clean)


def test_not_a_dicom_file_is_refused() -> None:
    with pytest.raises(InvalidImageError):
        deidentify_dicom(b"\x89PNG\r\n\x1a\nnot dicom", salt="x", name="photo.png")
