"""Which model a study sees while a canary runs: a stable share of patients goes to the canary.

A patient's bucket is a hash of the task and the patient's id (SHA-256, not Python's salted ``hash``), so the
same patient's films always see the same model, on every replica and after every restart, and a share of
``percent`` puts about that percent of patients on the canary. Studies without a patient (anonymous
predictions) always see production.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def patient_bucket(task: str, patient: int) -> int:
    """The patient's bucket for ``task``: an integer in ``[0, BUCKETS)``, the same everywhere and always."""
    digest = hashlib.sha256(f"care-canary:{task}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def routes_to_canary(task: str, patient: int | None, percent: float) -> bool:
    """Whether ``patient``'s studies of ``task`` go to the canary when ``percent`` of patients do."""
    if patient is None or percent <= 0:
        return False
    return patient_bucket(task, patient) < round(percent * BUCKETS / 100)
