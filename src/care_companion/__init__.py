"""Care Companion: AI assistance for radiology departments.

Every result produced by this package is decision support for a radiologist, never a diagnosis.
"""

from __future__ import annotations

__version__ = "0.1.0"

REVIEW_WARNING = (
    "AI assistance only: this result may be wrong and is not a diagnosis. "
    "A radiologist must review the images and confirm or correct it before any report is finalised."
)
