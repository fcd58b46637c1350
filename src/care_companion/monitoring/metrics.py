"""Prometheus metrics of the inference service, in a registry of their own (one per app instance)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Every metric the service exposes at ``GET /metrics``.

    Requests and latency by endpoint and status, predictions by class and decision, the confidence
    histogram, micro-batch sizes, queue depth, rejected inputs by reason and the loaded model versions.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "care_http_requests", "HTTP requests by endpoint and status.", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "care_http_request_seconds",
            "Server-side request latency by endpoint and status.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "care_predictions",
            "Predictions by task, decided class and decision.",
            ["task", "label", "decision"],
            registry=r,
        )
        self.confidence = Histogram(
            "care_prediction_confidence",
            "Calibrated probability of the decided class.",
            ["task", "level"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "care_batch_size", "Images per engine call (micro-batch size).", ["task"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "care_inference_seconds", "Engine time per micro-batch.", ["task"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("care_queue_depth", "Images waiting for the engine.", ["task"], registry=r)
        self.rejected = Counter("care_rejected_inputs", "Inputs refused, by reason.", ["task", "reason"], registry=r)
        self.model = Info("care_model", "The model version each task serves.", ["task"], registry=r)
        self.model_loaded = Gauge("care_model_loaded", "1 when the task has a model loaded.", ["task"], registry=r)
        self.model_expected = Gauge(
            "care_model_expected",
            "1 when the task should serve a model: one is configured, or registered under a serving alias.",
            ["task"],
            registry=r,
        )
        self.drift_alarm = Gauge(
            "care_drift_alarm", "1 when the latest drift check of the task's window found drift.", ["task"], registry=r
        )
        self.drift_p_value = Gauge(
            "care_drift_p_value",
            "Holm-adjusted p-value of each drift test family (NaN: not run yet).",
            ["task", "test"],
            registry=r,
        )
        self.drift_window_images = Gauge(
            "care_drift_window_images", "Images of the task in the drift window.", ["task"], registry=r
        )
        self.online = {
            name: Gauge(f"care_online_{name}", f"Online {name} over the last confirmed studies.", ["task"], registry=r)
            for name in ("sensitivity", "specificity", "accuracy")
        }
        self.online_confirmed = Gauge(
            "care_online_confirmed", "Confirmed studies the online figures are based on.", ["task"], registry=r
        )

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_prediction(self, task: str, label: str, positive: bool, probability: float, level: str) -> None:
        """Count one prediction: its class, decision and confidence."""
        self.predictions.labels(task, label, "positive" if positive else "negative").inc()
        self.confidence.labels(task, level).observe(probability)

    def observe_batch(self, task: str, size: int, seconds: float) -> None:
        """Record one engine call."""
        self.batch_size.labels(task).observe(size)
        self.inference.labels(task).observe(seconds)

    def observe_rejection(self, task: str, reason: str) -> None:
        """Count one refused input."""
        self.rejected.labels(task, reason).inc()

    def set_model(self, task: str, info: dict[str, str] | None) -> None:
        """Record the loaded model of a task (None: no model)."""
        self.model_loaded.labels(task).set(1 if info else 0)
        if info:
            self.model.labels(task).info(info)

    def set_drift(self, task: str, drifted: bool | None, p_values: dict[str, float | None], images: int) -> None:
        """Record a task's latest drift check."""
        self.drift_alarm.labels(task).set(1 if drifted else 0)
        for test, value in p_values.items():
            self.drift_p_value.labels(task, test).set(math.nan if value is None else value)
        self.drift_window_images.labels(task).set(images)

    def set_online(self, task: str, figures: dict[str, float | None], confirmed: int) -> None:
        """Record a task's online performance (None: no confirmed study of that kind yet)."""
        for name, gauge in self.online.items():
            value = figures.get(name)
            gauge.labels(task).set(math.nan if value is None else value)
        self.online_confirmed.labels(task).set(confirmed)

    def totals(self, name: str) -> dict[tuple[str, ...], float]:
        """Current values of a counter or gauge family by label values (e.g. ``care_predictions``)."""
        out: dict[tuple[str, ...], float] = {}
        for family in self.registry.collect():
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name in (name, f"{name}_total"):
                    out[tuple(sample.labels.values())] = sample.value
        return out

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
