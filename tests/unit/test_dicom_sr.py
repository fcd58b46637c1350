"""AI results as DICOM for the PACS: the Structured Report (TID 1500 in a Comprehensive 3D SR) read back gives the
finding, each calibrated probability, the threshold, the model and version, the review statement and the source
instances; a verdict gives a new, verified report that names the one it supersedes; the heat map as a Secondary
Capture in the source's study."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from care_companion import REVIEW_WARNING
from care_companion.interop.dicom_sr import MANUFACTURER, PRIVATE_SCHEME, heatmap_sc, result_sr
from care_companion.interop.fhir import Verdict
from tests.helpers import ai_result as result
from tests.helpers import dicom_film

AT = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def source() -> Dataset:
    """A chest film as a modality sends it."""
    return dicom_film((np.arange(96 * 96) % 251).reshape(96, 96).astype(np.uint8))


def written(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def concept(item: Dataset, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[attribute][0]
    return code.CodeValue, code.CodingSchemeDesignator


def test_the_report_carries_finding_probabilities_model_and_review_statement() -> None:
    film = source()
    sr = written(result_sr(result(), [film]))
    assert sr.Modality == "SR" and sr.PatientID == "MRN-77" and sr.StudyInstanceUID == film.StudyInstanceUID
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"  # the AI's answer alone
    content = list(items(sr))
    groups = [i for i in content if i.ValueType == "CONTAINER" and concept(i) == ("125007", "DCM")]
    decision = next(g for g in groups if any(concept(i) == ("threshold", PRIVATE_SCHEME) for i in items(g)))
    findings = [i for i in items(decision) if i.ValueType == "CODE" and concept(i) == ("121071", "DCM")]
    assert [concept(f, "ConceptCodeSequence") for f in findings] == [("233604007", "SCT")]  # the decided class
    probabilities: dict[str, float] = {}
    for group in groups:
        kinds = [concept(i, "ConceptCodeSequence") for i in group.get("ContentSequence", []) if i.ValueType == "CODE"]
        values = [
            float(i.MeasuredValueSequence[0].NumericValue)
            for i in group.get("ContentSequence", [])
            if i.ValueType == "NUM" and concept(i) == ("122157", "DCM")
        ]
        if values:
            probabilities[kinds[0][0]] = values[0]
    assert probabilities["233604007"] == pytest.approx(0.84) and probabilities["56717001"] == pytest.approx(0.11)
    assert probabilities["chest-unknown"] == pytest.approx(0.01)  # no SNOMED code: the private scheme
    thresholds = [i for i in content if i.ValueType == "NUM" and concept(i) == ("threshold", PRIVATE_SCHEME)]
    assert float(thresholds[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.21)
    texts = " ".join(str(i.TextValue) for i in content if i.ValueType == "TEXT")
    assert REVIEW_WARNING in texts and "not a diagnosis" in texts
    text = {concept(i)[0]: str(i.TextValue) for i in content if i.ValueType == "TEXT" and i.TextValue != ""}
    assert text[codes.DCM.AlgorithmName.value] == "chest" and text[codes.DCM.AlgorithmVersion.value] == "3"
    assert text[codes.DCM.DeviceObserverModelName.value] == "chest 3"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == film.SOPInstanceUID
    assert sr.Manufacturer == MANUFACTURER


def test_a_verdict_gives_a_verified_report_that_supersedes_the_first() -> None:
    film = source()
    first = result_sr(result(), [film])
    second = written(result_sr(result(Verdict("normal", False, AT)), [film], previous=first))
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.CompletionFlag == "COMPLETE" and second.VerificationFlag == "VERIFIED"
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
    texts = [str(i.TextValue) for i in items(second) if i.ValueType == "TEXT"]
    assert any(t.startswith("Radiologist's reading: normal (corrects the AI)") for t in texts)


def test_a_report_needs_its_source_instances() -> None:
    with pytest.raises(ValueError, match="source instances"):
        result_sr(result(), [])


def test_the_heat_map_is_a_secondary_capture_in_the_films_study() -> None:
    film = source()
    overlay = np.zeros((96, 96, 3), np.uint8)
    overlay[..., 0] = np.asarray(film.pixel_array)
    sc = written(heatmap_sc(film, overlay, model="chest 3"))
    assert sc.StudyInstanceUID == film.StudyInstanceUID and sc.PatientID == "MRN-77"
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (96, 96, 3)
    assert np.array_equal(sc.pixel_array, overlay) and "not a diagnosis" in sc.SeriesDescription
