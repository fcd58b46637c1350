"""Online performance from radiologists' verdicts: how the served models do on the studies they confirmed."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from care_companion.tasks import TaskSpec


class OnlinePerformance(BaseModel):
    """Sensitivity, specificity and accuracy over a task's last confirmed studies, with the counts behind them."""

    task: str
    studies: int = Field(description="Confirmed studies with a model prediction that these figures use.")
    without_prediction: int = Field(description="Confirmed studies the model gave no answer for (left out).")
    positives: int = Field(description="Studies the radiologist confirmed as disease (any disease class).")
    negatives: int
    true_positives: int
    false_negatives: int = Field(description="Missed disease: the worst error.")
    true_negatives: int
    false_positives: int
    correct: int = Field(description="Studies whose predicted label equals the confirmed label.")
    sensitivity: float | None = None
    specificity: float | None = None
    accuracy: float | None = None
    window: int = Field(description="How many recent confirmed studies were asked for.")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def online_performance(
    outcomes: Sequence[tuple[str | None, bool | None, str]], task: TaskSpec, *, window: int
) -> OnlinePerformance:
    """Figures over ``outcomes`` (predicted label, predicted positive, confirmed label), e.g. from
    :func:`care_companion.records.repos.recent_outcomes`. Disease means any of the task's positive classes;
    a prediction's decision (at the operating point) is what counts as positive, as in the evaluation."""
    positives = {c.casefold() for c in task.positives}
    tp = fn = tn = fp = correct = missing = 0
    for predicted, positive, truth in outcomes:
        if predicted is None:
            missing += 1
            continue
        called = bool(positive) if positive is not None else predicted.casefold() in positives
        diseased = truth.casefold() in positives
        tp += diseased and called
        fn += diseased and not called
        tn += not diseased and not called
        fp += not diseased and called
        correct += predicted.casefold() == truth.casefold()
    studies = tp + fn + tn + fp
    return OnlinePerformance(
        task=task.name,
        studies=studies,
        without_prediction=missing,
        positives=tp + fn,
        negatives=tn + fp,
        true_positives=tp,
        false_negatives=fn,
        true_negatives=tn,
        false_positives=fp,
        correct=correct,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        accuracy=_ratio(correct, studies),
        window=window,
    )
