"""Query/retrieve from the PACS over DICOMweb: a study already in the PACS is fetched by WADO-RS (PS3.18 10.4,
``GET {root}/studies/{uid}`` as ``multipart/related; type="application/dicom"``) to be read again
(``care-companion dicom pull --study UID``); its instances then go through the receiver's own checks and routing."""

from __future__ import annotations

import httpx

from care_companion.errors import CareError, RequestError
from care_companion.interop.dicom_inbox import Unroutable, checked_uid_text
from care_companion.interop.dicomweb import DICOM_MEDIA_TYPE, split_related


class PullError(CareError):
    """The PACS could not be asked, or has no such study."""

    code = "pacs_unavailable"


def retrieve_study(pacs: httpx.Client, study: str) -> list[bytes]:
    """The instances of ``study`` from the PACS (``pacs``: a client whose base URL is its DICOMweb root), as DICOM
    files.

    Raises:
        PullError: the UID is malformed, the PACS cannot be reached, has no such study, or answered something else.
    """
    try:
        uid = checked_uid_text(study, "StudyInstanceUID")
    except Unroutable as exc:
        raise PullError(str(exc)) from exc
    accept = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'
    try:
        response = pacs.get(f"studies/{uid}", headers={"Accept": accept})
    except httpx.HTTPError as exc:
        raise PullError(f"the PACS at {pacs.base_url} cannot be reached: {exc}") from exc
    if response.status_code == 404:
        raise PullError(f"the PACS at {pacs.base_url} has no study {uid}")
    if response.status_code != 200:
        raise PullError(f"the PACS answered WADO-RS for study {uid} with HTTP {response.status_code}")
    try:
        return split_related(response.headers.get("content-type", ""), response.content)
    except RequestError as exc:
        raise PullError(f"the PACS's answer for study {uid}: {exc.detail}") from exc
