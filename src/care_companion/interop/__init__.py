"""Speaking hospital standards: results as FHIR resources (and, later, DICOM)."""
