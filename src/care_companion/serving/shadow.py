"""Shadow mode (``CARE_CANARY_MODE=shadow``): the canary also scores every study production answered, after the
answer has gone out, and its answer is kept in ``shadow_predictions`` beside production's prediction, never shown.
The release report compares the two on identical films and counts the canary's answers on confirmed studies.

Shadow scoring never delays or fails a request: it runs in the background once production's result is kept
(only kept predictions are shadowed: there is nothing to compare an unlogged one with), a canary that cannot take
the films (overloaded, a bad decode) only costs that shadow answer, and shutdown waits for the ones running.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker

from care_companion.records.models import ShadowPrediction
from care_companion.records.repos import add_shadow_prediction
from care_companion.serving.engine import ServedModel
from care_companion.serving.predict import Predictor, Scored, Upload

log = logging.getLogger(__name__)


class ShadowScorer:
    """Schedules and keeps the canary's shadow answers (one per app)."""

    def __init__(self, predictor: Predictor, sessions: sessionmaker[Session]) -> None:
        self.predictor = predictor
        self.sessions = sessions
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, task: str, views: dict[str, Upload], answered_by: str | None, prediction_id: int) -> bool:
        """Score ``views`` (the films of prediction ``prediction_id``, which version ``answered_by`` made) with the
        task's canary in the background, when shadow mode applies to it; whether it was scheduled."""
        model = self.predictor.models.shadow_for(task, answered_by)
        if model is None or not views:
            return False
        running = asyncio.get_running_loop().create_task(self._score(model, views, prediction_id))
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return True

    async def _score(self, model: ServedModel, views: dict[str, Upload], prediction_id: int) -> None:
        try:
            async with model.lease() as held:
                scored = await self.predictor.score_unseen(held, views)
            await asyncio.to_thread(self._keep, held, prediction_id, scored)
        except Exception as exc:  # a shadow answer is never worth a failure
            log.warning("shadow answer of %s on prediction %s lost: %s", model.source.reference, prediction_id, exc)

    def _keep(self, model: ServedModel, prediction_id: int, scored: Scored) -> None:
        with self.sessions.begin() as session:
            add_shadow_prediction(
                session=session,
                shadow=ShadowPrediction(
                    prediction_id=prediction_id,
                    task=model.task_name,
                    model_name=model.meta.task,
                    model_version=model.source.version,
                    probabilities=scored.probabilities,
                    label=scored.label,
                    positive=scored.positive,
                    refused=scored.refused,
                    latency_ms=scored.latency_ms,
                ),
            )

    async def drain(self) -> None:
        """Wait for the shadow answers still running."""
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
