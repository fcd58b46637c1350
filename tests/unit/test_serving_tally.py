"""Per-version traffic counts: how a request ends decides what it counts as, and a database outage loses none."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from care_companion.errors import InvalidImageError, NotForTask, RequestError, ServiceUnavailable
from care_companion.records.db import make_engine, session_factory
from care_companion.records.models import LATENCY_BUCKETS_MS, Base
from care_companion.records.repos import serving_totals
from care_companion.serving.tally import ServingTally


def test_outcomes_are_counted_by_how_the_request_ends(tmp_path: Path) -> None:
    tally = ServingTally(sessionmaker(create_engine("sqlite://")), every=0, replica="r1")
    with tally.timing("chest", "2", "canary", time.perf_counter() - 0.040):
        pass  # answered in about 40 ms
    for error in (NotForTask("photo", task="chest", code="not_a_chest_xray"), ServiceUnavailable("overloaded")):
        with pytest.raises(type(error)), tally.timing("chest", "2", "canary", time.perf_counter()):
            raise error
    for senders in (InvalidImageError("not an image", reason="undecodable"), RequestError("no file")):
        with pytest.raises(type(senders)), tally.timing("chest", "2", "canary", time.perf_counter()):
            raise senders  # the sender's fault: not the model's
    with pytest.raises(RequestError), tally.timing("chest", "2", "canary", time.perf_counter()):
        raise RequestError("not a study model", status=503)
    (row,) = tally.take()
    assert (row.requests, row.errors, row.refused) == (4, 2, 1)
    assert row.latency_counts[LATENCY_BUCKETS_MS.index(50)] == 1 and sum(row.latency_counts) == 1
    assert tally.take() == []


def test_a_failed_flush_keeps_the_counts_for_the_next_one(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'care.db'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    broken = ServingTally(sessionmaker(create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")), every=0)
    broken.record("chest", "1", "production", outcome="ok", seconds=0.01)
    assert broken.flush() == 0  # the database cannot be opened: nothing lost
    broken.sessions = sessions
    broken.record("chest", "1", "production", outcome="error", seconds=0.5)
    assert broken.flush() == 1
    with sessions() as session:
        requests, errors, refused, counts = serving_totals(
            session=session, task="chest", version="1", roles=("production",)
        )
    assert (requests, errors, refused, sum(counts)) == (2, 1, 0, 1)
