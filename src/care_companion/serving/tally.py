"""Per-version traffic counts of one replica, written to the records database every ``CARE_SERVING_STATS_SECONDS``
(and at shutdown) for the release report: requests answered, refused (not the task's body part) and failed, and a
latency histogram. A bad image is the sender's error, not the model's, and is not counted. Summed over replicas
and periods, the counts give each version's error rate and p95 latency (:mod:`care_companion.release.report`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from care_companion.errors import InvalidImageError, NotForTask, RequestError
from care_companion.records.models import LATENCY_BUCKETS_MS, ServingStat
from care_companion.records.repos import add_serving_stats
from care_companion.serving.middleware import REPLICA

log = logging.getLogger(__name__)


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    refused: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))


class ServingTally:
    """Counts per (task, version, role) since the last flush; thread-safe."""

    def __init__(self, sessions: sessionmaker[Session], every: float, replica: str | None = None) -> None:
        self.sessions = sessions
        self.every = every
        self.replica = replica or REPLICA.decode()
        self._counts: dict[tuple[str, str | None, str], _Counts] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.Task[None] | None = None

    def record(self, task: str, version: str | None, role: str, *, outcome: str, seconds: float) -> None:
        """Count one request: ``outcome`` ``ok``, ``refused`` or ``error``, taking ``seconds``."""
        with self._lock:
            counts = self._counts.setdefault((task, version, role), _Counts())
            counts.requests += 1
            counts.errors += outcome == "error"
            counts.refused += outcome == "refused"
            if outcome == "ok":
                counts.latency[bisect.bisect_left(LATENCY_BUCKETS_MS, seconds * 1000)] += 1

    @contextmanager
    def timing(self, task: str, version: str | None, role: str, started: float) -> Iterator[None]:
        """Count the request run in the block from ``started`` (``time.perf_counter()``) by how it ends: ``ok``,
        ``refused`` (:class:`NotForTask`), not at all (a bad image or request: the sender's), else ``error``."""
        try:
            yield
        except NotForTask:
            self.record(task, version, role, outcome="refused", seconds=time.perf_counter() - started)
            raise
        except InvalidImageError:
            raise
        except RequestError as exc:
            if exc.status >= 500:
                self.record(task, version, role, outcome="error", seconds=time.perf_counter() - started)
            raise
        except BaseException:
            self.record(task, version, role, outcome="error", seconds=time.perf_counter() - started)
            raise
        self.record(task, version, role, outcome="ok", seconds=time.perf_counter() - started)

    def take(self) -> list[ServingStat]:
        """The counts since the last take, as rows, and start counting afresh."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return [
            ServingStat(
                task=task,
                model_version=version,
                role=role,
                replica=self.replica,
                requests=c.requests,
                errors=c.errors,
                refused=c.refused,
                latency_counts=c.latency,
            )
            for (task, version, role), c in counts.items()
        ]

    def flush(self) -> int:
        """Write the counts since the last flush; a database outage keeps them for the next one. Blocking."""
        rows = self.take()
        if not rows:
            return 0
        try:
            with self.sessions.begin() as session:
                add_serving_stats(session=session, rows=rows)
        except Exception as exc:  # never fail the service for its statistics
            log.warning("serving statistics not written (kept for the next try): %s", exc)
            with self._lock:
                for row in rows:
                    self._merge(row)
            return 0
        return len(rows)

    def _merge(self, row: ServingStat) -> None:
        counts = self._counts.setdefault((row.task, row.model_version, row.role), _Counts())
        counts.requests += row.requests
        counts.errors += row.errors
        counts.refused += row.refused
        counts.latency = [a + b for a, b in zip(counts.latency, row.latency_counts, strict=True)]

    def start(self) -> None:
        """Flush every ``every`` seconds in the background (0: only at :meth:`stop`)."""
        if self.every:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await asyncio.to_thread(self.flush)

    async def stop(self) -> None:
        """Stop the loop and write what is left."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await asyncio.to_thread(self.flush)
